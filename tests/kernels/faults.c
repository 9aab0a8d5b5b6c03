/* Kernels for the fault injection suite (tests/faults): calls that wait, and files that grow. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/types.h>
#include <unistd.h>

/* Leave a file named "running" in the working directory (the session's), then wait until killed. */
void mark_and_pause(void)
{
    close(open("running", O_WRONLY | O_CREAT, 0644));
    for (;;)
        pause();
}

/* Write `count` files of `size` bytes each ("fill-0.bin", ...); 0, or minus the errno of the first failure. */
long write_files(int count, long size)
{
    static char block[1 << 16];
    char name[32];
    for (int i = 0; i < count; i++) {
        snprintf(name, sizeof name, "fill-%d.bin", i);
        int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0)
            return -errno;
        for (long left = size; left > 0;) {
            ssize_t written = write(fd, block, left < (long)sizeof block ? (size_t)left : sizeof block);
            if (written < 0) {
                int error = errno;
                close(fd);
                return -error;
            }
            left -= written;
        }
        close(fd);
    }
    return 0;
}

/* write_files, then wait until killed; returns only if a write failed. */
long write_files_and_pause(int count, long size)
{
    long result = write_files(count, size);
    if (result == 0)
        mark_and_pause();
    return result;
}

/* Fork a child that leaves the session's process group for a session of its own (setsid) and forks a
   grandchild that does the same; both wait until killed. Returns the child's pid. */
int fork_detached(void)
{
    pid_t child = fork();
    if (child == 0) {
        setsid();
        if (fork() == 0)
            setsid();
        for (;;)
            pause();
    }
    return (int)child;
}
