/* The tracker's replies as they reach a registered board (tracker_replies): int32 lengths and JSON. The first
 * byte says which requests are outstanding (update_info, put, get pending match keys), the rest is received. */
#include "fuzz.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static Tracker t;
    tracker_init(&t, "127.0.0.1:9190", "fuzz", NULL, "fuzz", 9091, NULL, 0);
    t.opened = 1;
    strcpy(t.matchkey, "fuzz:0.5");
    static const char kinds[] = "upg?";
    for (int k = 0; k < 4; k++) t.expected[t.expected_count++] = kinds[(data[0] >> (2 * k)) & 3];
    buf_add(&t.in, data + 1, size - 1);
    tracker_replies(&t);
    buf_free(&t.in);
    buf_free(&t.out);
    return 0;
}
