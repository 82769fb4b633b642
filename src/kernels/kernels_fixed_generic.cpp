// fixed tiles for the generic ISA; flags in CMakeLists.txt (see kernels.inc for why).
#define EXACTFORGE_KERNEL_NS generic
#define EXACTFORGE_FIXED_TILES
#include "kernels.inc"
