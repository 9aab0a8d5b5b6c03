/* Kernels that fail on purpose, to prove the board daemon outlives them. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

void segfault(void) { *(volatile int *)0 = 42; }

void do_abort(void) { abort(); }

void exit_with(int code) { _exit(code); }

void raise_signal(int number) { raise(number); }

/* Spin until killed. */
void spin_forever(void)
{
    volatile unsigned long n = 0;
    for (;;)
        n++;
}

/* Fork a child that outlives the call (it sleeps); returns the child's pid. */
int fork_sleeper(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        for (;;)
            pause();
    }
    return (int)pid;
}
