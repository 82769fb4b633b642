// What AMX-INT8 delivers on this machine, with and without tile loads: the ceiling
// the int8-digit exact kernel works under. Build and run (Linux, a CPU with AMX):
//   g++ -O2 -mamx-tile -mamx-int8 benchmarks/bench_amx_ceiling.cpp -o /tmp/amx && /tmp/amx 64 4096
// Arguments: the A/B tile row stride in bytes and the span of distinct data cycled through.
// The loop is the classic 2x2 block (4 C tiles, 2 A and 2 B loads per 4 products); with no loads
// at all (argument 0) it shows the products' own rate.
#include <immintrin.h>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <unistd.h>
#include <sys/syscall.h>
#include <chrono>
#include <vector>
struct cfg_t { uint8_t palette, start; uint8_t r[14]; uint16_t colsb[16]; uint8_t rows[16]; };
int main(int argc, char** argv){
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) { std::printf("AMX-INT8 not usable here\n"); return 1; }
  alignas(64) cfg_t c; memset(&c,0,sizeof c); c.palette=1;
  for(int i=0;i<8;i++){ c.rows[i]=16; c.colsb[i]=64; }
  _tile_loadconfig(&c);
  if (argc < 3) { std::printf("usage: %s STRIDE SPAN\n", argv[0]); return 2; }
  long stride = atol(argv[1]); long span = atol(argv[2]);  // stride 0: no loads
  std::vector<int8_t> buf(span + 16*stride + 4096, 1);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  long N=2000000; auto t0=std::chrono::steady_clock::now();
  long off=0;
  for(long i=0;i<N;i++){
    const int8_t* p = buf.data() + off;
    if (stride) { _tile_loadd(4, p, stride); _tile_loadd(5, p + 64, stride); _tile_loadd(6, p+128, stride); _tile_loadd(7, p+192, stride); }
    _tile_dpbssd(0,4,6); _tile_dpbssd(1,4,7); _tile_dpbssd(2,5,6); _tile_dpbssd(3,5,7);
    off += 256; if (off >= span) off = 0;
  }
  double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count();
  printf("stride %ld span %ld: %.1f cycles/TDP at 3GHz, %.2f TMAC/s\n", stride, span, s*3e9/(4.0*N), 4.0*N*16*16*64/s/1e12);
  _tile_release();
}
