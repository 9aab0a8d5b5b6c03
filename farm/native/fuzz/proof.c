/* The farm-secret proof with a fixed secret, the bytes arriving in pieces as from a socket: the acceptor's side
 * (proof_feed, then the hello behind it, as the daemon takes a connection on) or the connector's
 * (proof_connector_feed, as the tracker and proxy links do). The first byte picks the side and the piece size. */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

static const unsigned char secret[] = FUZZ_SECRET;
static Hello hello;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int acceptor = !(data[0] & 1);
    size_t piece = (size_t)(data[0] >> 1) + 1;
    data++, size--;
    Proof proof;
    memset(&proof, 0, sizeof proof);
    memset(proof.ours, FUZZ_NONCE_BYTE, NONCE_SIZE);
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) abort();
    size_t len = 0, at = 0;
    char why[600];
    long used = 0;
    while (at < size && proof.stage < 2) {
        size_t take = size - at < piece ? size - at : piece;
        memcpy(buf + len, data + at, take);
        len += take, at += take;
        Buf out = {0};
        used = acceptor ? proof_feed(&proof, secret, sizeof secret - 1, buf, len, &out, why, sizeof why)
                        : proof_connector_feed(&proof, secret, sizeof secret - 1, buf, len, &out, why, sizeof why);
        buf_free(&out);
        if (used < 0) break;
        memmove(buf, buf + used, len - (size_t)used);
        len -= (size_t)used;
    }
    if (used >= 0 && proof.stage == 2 && acceptor) {
        memcpy(buf + len, data + at, size - at);
        len += size - at;
        size_t hello_used;
        hello_parse(buf, len, &hello, &hello_used, why, sizeof why);
    }
    free(buf);
    return 0;
}
