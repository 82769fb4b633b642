// exact tiles for the avx2 ISA; flags in CMakeLists.txt (see kernels.inc for why).
#define EXACTFORGE_KERNEL_NS avx2
#define EXACTFORGE_EXACT_TILES
#include "kernels.inc"
