// The optimizer loops with AVX2 and FMA (optim.inc); run only where the CPU has both.
#define EXACTFORGE_OPTIM_NS optim_avx2
#include "optim.inc"
