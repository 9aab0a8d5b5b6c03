/* farm-board: the native board server (docs/native-board.md). */
#define _GNU_SOURCE
#include "board.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>

int main(int argc, char **argv) {
    Options options;
    int status = parse_options(argc, argv, &options);
    if (status) return status == 1 ? 0 : status;
    /* the session user first, as the Python board resolves it before it reads any secret */
    if (session_user(options.session_user_name, &options.user)) return 2;
    warn_about_user(&options.user);
    prctl(PR_SET_DUMPABLE, 0); /* processes of the daemon's own user cannot read its memory through /proc */
    /* the sessions' cgroups (on cgroup v2 the daemon may move into a leaf of its own, and so must the spawner), then
     * the spawner, before the secret and the TLS key are read: sessions are forked from it */
    static Confinement confinement;
    confinement_create(&confinement, &options.limits);
    release_free_memory(); /* what the cgroup set-up read (/proc/self/mountinfo) is not kept by the daemon */
    unsigned char *session_status = mmap(NULL, STATUS_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    Spawner spawner = {0};
    if (session_status == MAP_FAILED || spawner_start(&spawner, &options, &confinement, session_status)) {
        confinement_destroy(&confinement);
        return 1;
    }
    static unsigned char secret[4097];
    size_t secret_len = 0;
    if (options.secret_file && load_secret(options.secret_file, secret, &secret_len)) {
        spawner_stop(&spawner);
        confinement_destroy(&confinement);
        return 2;
    }
    /* the TLS key after the spawner too: no session process is forked from a process that read it */
    if (options.tls_enabled &&
        tls_load(&options.tls, !options.through_proxy, options.through_proxy || options.tracker != NULL)) {
        explicit_bzero(secret, sizeof secret);
        tls_unload();
        spawner_stop(&spawner);
        confinement_destroy(&confinement);
        return 2;
    }
    if (!secret_len && !options.through_proxy && strcmp(options.host, "127.0.0.1") && strcmp(options.host, "localhost") &&
        strcmp(options.host, "::1"))
        log_msg(LOG_WARNING, "the board server listens on %s without a farm secret: anyone who reaches it can run "
                "code on it (see docs/security.md)", options.host);
    status = serve_board(&options, secret, secret_len, &spawner, &confinement, session_status);
    explicit_bzero(secret, sizeof secret);
    tls_unload();
    spawner_stop(&spawner); /* where serve_board did not get as far */
    confinement_destroy(&confinement);
    return status;
}
