/*
 * Does the kernel write a signal frame into memory whose protection key the
 * receiving thread has disabled? (docs/mpk.md, "Known limits", "Signal
 * frames".) Needs a CPU with PKU.
 *
 *   gcc -O2 -pthread -o /tmp/signal-frame-pkey docs/repro/signal-frame-pkey.c
 *   /tmp/signal-frame-pkey 0   # the frame on a signal stack under the key
 *   /tmp/signal-frame-pkey 1   # the frame below a stack pointer under the key
 *
 * Prints "WRITTEN ..." (exit 1) where the kernel wrote it (Linux 6.12 and
 * later), "untouched" (exit 0) where it did not; where the write faults
 * the kernel kills the program with SIGSEGV.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
static char *page; static int pkey; static int mode;
static inline void wrpkru(unsigned v){ asm volatile("wrpkru"::"a"(v),"c"(0),"d"(0)); }
__attribute__((naked)) static void spin_handler(void){ asm volatile("1: pause; jmp 1b"); }
static void *attacker(void *a){
  (void)a;
  struct sigaction sa; memset(&sa,0,sizeof sa); sa.sa_handler=(void(*)(int))spin_handler; sa.sa_flags=SA_ONSTACK;
  sigaction(SIGUSR1,&sa,0);
  if(mode==0){ stack_t ss={.ss_sp=page,.ss_size=4*4096,.ss_flags=0}; if(sigaltstack(&ss,0)) perror("sigaltstack"); }
  wrpkru(3u<<(2*pkey)); /* deny pkey */
  if(mode==0){ syscall(SYS_tgkill,getpid(),syscall(SYS_gettid),SIGUSR1); }
  else { /* rsp into the page, then raise with raw syscall */
    long tid=syscall(SYS_gettid), pid=getpid();
    asm volatile("mov %0, %%rsp\n mov $234, %%eax\n mov %1, %%rdi\n mov %2, %%rsi\n mov $10, %%edx\n syscall\n 1: pause\n jmp 1b"::"r"(page+3*4096),"r"(pid),"r"(tid):"memory");
  }
  for(;;) pause();
}
int main(int argc,char**argv){
  mode = argc>1 ? atoi(argv[1]) : 0;
  pkey=syscall(SYS_pkey_alloc,0,0); if(pkey<0){perror("pkey_alloc");return 2;}
  page=mmap(0,4*4096,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  memset(page,0x11,4*4096);
  if(syscall(SYS_pkey_mprotect,page,4*4096,PROT_READ|PROT_WRITE,pkey)){perror("pkey_mprotect");return 2;}
  pthread_t t; pthread_create(&t,0,attacker,0);
  for(int i=0;i<1000000;i++){ for(int j=0;j<4*4096;j++) if(page[j]!=0x11){ printf("mode %d: WRITTEN at offset %d (byte %#x) by the kernel for a thread without access\n",mode,j,(unsigned char)page[j]); fflush(stdout); _exit(1);} usleep(1); }
  printf("mode %d: untouched\n",mode); fflush(stdout); _exit(0);
}
