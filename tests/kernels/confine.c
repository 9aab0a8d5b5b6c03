/* Kernels for the confinement tests (tests/faults/test_fault_confine.py): a process that would outlive its
   session, a fork bomb, floods of open files, memory and files. Each is bounded by its argument. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Daemonise a process the classic way: fork, setsid, fork again, and the middle process exits, so the
   grandchild is in a session of its own and nobody's child but a reaper's. It waits until killed.
   Returns the grandchild's pid (minus errno on failure). */
int spawn_detached(void)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -errno;
    pid_t child = fork();
    if (child < 0)
        return -errno;
    if (child == 0) {
        setsid();
        pid_t grandchild = fork();
        if (grandchild == 0) {
            for (;;)
                pause();
        }
        if (write(fds[1], &grandchild, sizeof grandchild) != sizeof grandchild)
            _exit(1);
        _exit(0);
    }
    pid_t grandchild = -1;
    if (read(fds[0], &grandchild, sizeof grandchild) != sizeof grandchild)
        grandchild = -EIO;
    close(fds[0]);
    close(fds[1]);
    waitpid(child, NULL, 0);
    return (int)grandchild;
}

/* SIGKILL process `pid` (the board daemon, whose pid the test knows): 0, or -errno. */
int kill_process(int pid)
{
    return kill((pid_t)pid, SIGKILL) == 0 ? 0 : -errno;
}

/* Every process forks at each of `depth` levels (2^depth processes if nothing stops it); all but the
   caller then wait until killed. Returns how many forks failed in the whole tree, once every process has
   done its forking (or -1 after 10 s). */
struct tally {
    long started, done, failed;
};

static long tally_started(struct tally *tally)
{
    return __atomic_load_n(&tally->started, __ATOMIC_SEQ_CST);
}

long fork_bomb(int depth)
{
    struct tally *tally = mmap(NULL, sizeof *tally, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (tally == MAP_FAILED)
        return -1;
    tally->started = 1; /* the caller */
    pid_t caller = getpid();
    for (int level = 0; level < depth; level++) {
        pid_t child = fork();
        if (child < 0)
            __atomic_add_fetch(&tally->failed, 1, __ATOMIC_SEQ_CST);
        else if (child > 0)
            __atomic_add_fetch(&tally->started, 1, __ATOMIC_SEQ_CST);
    }
    __atomic_add_fetch(&tally->done, 1, __ATOMIC_SEQ_CST);
    if (getpid() != caller)
        for (;;)
            pause();
    for (int waited = 0; __atomic_load_n(&tally->done, __ATOMIC_SEQ_CST) < tally_started(tally); waited++) {
        if (waited == 1000)
            return -1;
        usleep(10000);
    }
    long failed = tally->failed;
    munmap(tally, sizeof *tally);
    return failed;
}

/* Open /dev/null up to `count` times; how many opened before EMFILE (minus another errno); all are closed again. */
long open_many(long count)
{
    int *fds = calloc((size_t)count, sizeof *fds);
    if (fds == NULL)
        return -ENOMEM;
    long opened = 0, result;
    while (opened < count && (fds[opened] = open("/dev/null", O_RDONLY)) >= 0)
        opened++;
    result = opened == count || errno == EMFILE ? opened : -errno;
    while (opened > 0)
        close(fds[--opened]);
    free(fds);
    return result;
}

/* Allocate and touch `megabytes` MB, one MB at a time, and keep it; how many MB it got (minus, if malloc failed). */
long hog_memory(long megabytes)
{
    for (long i = 0; i < megabytes; i++) {
        char *block = malloc(1 << 20);
        if (block == NULL)
            return -i;
        memset(block, 1, 1 << 20);
    }
    return megabytes;
}

/* Create `count` empty files ("e-0", ...) in the working directory (the session's), then wait until killed;
   returns only if a file could not be created: minus its errno. */
long make_files_and_pause(long count)
{
    char name[32];
    for (long i = 0; i < count; i++) {
        snprintf(name, sizeof name, "e-%ld", i);
        int fd = open(name, O_WRONLY | O_CREAT, 0644);
        if (fd < 0)
            return -errno;
        close(fd);
    }
    for (;;)
        pause();
}
