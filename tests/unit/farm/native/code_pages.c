/* Test driver: drop_code_pages() (util.c) on two private mappings of the file named by argv[1] (16 pages or more),
 * one read-only and executable, one written. Prints the code mapping's resident pages before and after, and
 * whether every written byte is still there. */
#define _GNU_SOURCE
#include "board.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

enum { PAGES = 16 };

/* Whether the page at `address` is mapped in (the present bit of /proc/self/pagemap, readable unprivileged). */
static int present(const void *address, size_t page) {
    int fd = open("/proc/self/pagemap", O_RDONLY);
    uint64_t entry = 0;
    if (fd < 0 || pread(fd, &entry, sizeof entry, (off_t)((uintptr_t)address / page * sizeof entry)) != 8) _exit(3);
    close(fd);
    return (int)(entry >> 63);
}

static int resident(const unsigned char *mapping, size_t page) {
    int count = 0;
    for (int k = 0; k < PAGES; k++) count += present(mapping + (size_t)k * page, page);
    return count;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    size_t page = (size_t)sysconf(_SC_PAGESIZE), size = PAGES * page;
    int fd = open(argv[1], O_RDONLY);
    unsigned char *code = mmap(NULL, size, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
    unsigned char *data = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (fd < 0 || code == MAP_FAILED || data == MAP_FAILED) return 2;
    volatile unsigned sum = 0;
    for (int k = 0; k < PAGES; k++) {
        sum += code[(size_t)k * page];
        data[(size_t)k * page] = (unsigned char)(k + 1);
    }
    int before = resident(code, page);
    drop_code_pages();
    int after = resident(code, page);
    int kept = 1;
    for (int k = 0; k < PAGES; k++) kept &= data[(size_t)k * page] == (unsigned char)(k + 1);
    printf("%d %d %d\n", before, after, kept);
    return 0;
}
