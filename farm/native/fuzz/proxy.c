/* The proxy's answer to a board waiting behind it (proxy_reply): a handshake reply code and the paired client's
 * key text, which the daemon then reads as a hello's key (key_parse). */
#include "fuzz.h"

#include <string.h>

static Proxy proxy;
static char client[MAX_KEY_LENGTH + 1];
static Hello hello;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    proxy_init(&proxy, "127.0.0.1", 9190, "fuzz", NULL, 0);
    buf_add(&proxy.in, data, size);
    size_t used = 0;
    char why[8400];
    if (proxy_reply(&proxy, client, sizeof client, &used) == 1) key_parse(client, strlen(client), &hello, why, sizeof why);
    buf_free(&proxy.in);
    return 0;
}
