// The optimizer loops for the baseline ISA (optim.inc).
#define EXACTFORGE_OPTIM_NS optim_generic
#include "optim.inc"
