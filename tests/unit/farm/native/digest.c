/* Test driver: the native board's SHA-256 and HMAC-SHA256 of a file's bytes, for comparison with hashlib. */
#define _GNU_SOURCE
#include "board.h"

#include <stdio.h>
#include <stdlib.h>

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *file = fopen(path, "rb");
    if (!file) exit(2);
    unsigned char *data = malloc(1 << 24);
    *n = fread(data, 1, 1 << 24, file);
    fclose(file);
    return data;
}

static void hex(const unsigned char digest[32]) {
    for (int k = 0; k < 32; k++) printf("%02x", digest[k]);
    printf("\n");
}

/* digest MESSAGE KEY: prints SHA-256(MESSAGE), then HMAC-SHA256(KEY, MESSAGE) fed in two parts. */
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    size_t n, key_len;
    unsigned char *message = slurp(argv[1], &n), *key = slurp(argv[2], &key_len), digest[32];
    Sha256 c;
    sha256_init(&c);
    sha256_update(&c, message, n / 3);
    sha256_update(&c, message + n / 3, n - n / 3);
    sha256_final(&c, digest);
    hex(digest);
    const unsigned char *parts[2] = {message, message + n / 2};
    size_t lens[2] = {n / 2, n - n / 2};
    hmac_sha256(key, key_len, parts, lens, 2, digest);
    hex(digest);
    free(message);
    free(key);
    return 0;
}
