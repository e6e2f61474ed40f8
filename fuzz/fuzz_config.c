/* fuzz_config.c - libFuzzer target: config_load() on any file contents.
 *
 * config_load() takes a path, so the input goes into a memfd and is loaded
 * through /proc/self/fd/N: no temp file, the loader runs unchanged. A
 * configuration that loads is then compared with the defaults and swapped
 * the way a SIGHUP reload does (config_restart_needed,
 * config_keep_restart_only), and every string it holds is read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "support.h"

static void touch_strings(const struct config *cfg)
{
    /* Read every string to its end (ASan sees a missing terminator). */
    size_t n = strlen(cfg->redis_host) + strlen(cfg->redis_path) + strlen(cfg->ns) +
               strlen(cfg->redis_username) + strlen(cfg->redis_password) +
               strlen(cfg->http_user_agent) + strlen(cfg->http_ca_file) +
               strlen(cfg->pg_conninfo) + strlen(cfg->files_root) + strlen(cfg->admin_listen);
    for (int i = 0; i < cfg->nchannels; i++)
        n += strlen(cfg->channels[i]);
    for (int i = 0; i < cfg->nstreams; i++)
        n += strlen(cfg->streams[i]);
    for (int i = 0; i < cfg->pg_nqueries; i++) {
        n += strlen(cfg->pg_queries[i].name) + strlen(cfg->pg_queries[i].sql);
        FUZZ_CHECK(config_query(cfg, cfg->pg_queries[i].name) != NULL);
    }
    FUZZ_CHECK(n > 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("jobd-fuzz.conf", 0);
        FUZZ_CHECK(fd >= 0);
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    }
    FUZZ_CHECK(ftruncate(fd, 0) == 0);
    FUZZ_CHECK(pwrite(fd, data, size, 0) == (ssize_t)size);

    struct config cfg, defaults;
    char err[4096];
    memset(err, 'x', sizeof(err));
    int rc = config_load(path, &cfg, err, sizeof(err));
    FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL);
    if (rc != 0) {
        /* Refused: the error names something, and nothing is kept. */
        FUZZ_CHECK(err[0] != '\0');
        FUZZ_CHECK(cfg.path == NULL && cfg.channels == NULL && cfg.redis_host == NULL);
        return 0;
    }
    /* Loaded: the invariants the daemon relies on. */
    FUZZ_CHECK(cfg.path && cfg.nstreams >= 1 && cfg.streams);
    FUZZ_CHECK(cfg.max_inflight >= 1 && cfg.batch >= 1 && cfg.retry.attempts >= 1);
    FUZZ_CHECK(cfg.pg_min_size <= cfg.pg_max_size);
    FUZZ_CHECK(cfg.log_level >= 0);
    touch_strings(&cfg);

    /* A reload from the defaults to this file, and back. */
    FUZZ_CHECK(config_defaults(&defaults) == 0);
    char names[2048];
    int changed = config_restart_needed(&defaults, &cfg, names, sizeof(names));
    FUZZ_CHECK(changed >= 0 && memchr(names, '\0', sizeof(names)) != NULL);
    config_keep_restart_only(&cfg, &defaults);
    FUZZ_CHECK(config_restart_needed(&defaults, &cfg, names, sizeof(names)) == changed);
    touch_strings(&cfg);
    touch_strings(&defaults);
    config_free(&defaults);
    config_free(&cfg);
    return 0;
}
