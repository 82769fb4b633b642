// int8-digit exact levels in portable C++ (see kernels_int.inc).
#define EXACTFORGE_INT_NS int_generic
#include "kernels_int.inc"
