/* farm-board: the native board server (docs/native-board.md). */
#define _GNU_SOURCE
#include "board.h"

#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

int main(int argc, char **argv) {
    Options options;
    int status = parse_options(argc, argv, &options);
    if (status) return status == 1 ? 0 : status;
    /* the session user first, as the Python board resolves it before it reads any secret */
    if (session_user(options.session_user_name, &options.user)) return 2;
    warn_about_user(&options.user);
    prctl(PR_SET_DUMPABLE, 0); /* processes of the daemon's own user cannot read its memory through /proc */
    static unsigned char secret[4097];
    size_t secret_len = 0;
    if (options.secret_file && load_secret(options.secret_file, secret, &secret_len)) return 2;
    if (!secret_len && !options.through_proxy && strcmp(options.host, "127.0.0.1") && strcmp(options.host, "localhost") &&
        strcmp(options.host, "::1"))
        log_msg(LOG_WARNING, "the board server listens on %s without a farm secret: anyone who reaches it can run "
                "code on it (see docs/security.md)", options.host);
    status = serve_board(&options, secret, secret_len);
    explicit_bzero(secret, sizeof secret);
    return status;
}
