/* main.c - the command line: parse options, load the configuration, run. */
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>

#include "config.h"
#include "daemon.h"
#include "log.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: jobd -c FILE [-t]\n"
                 "       jobd --version\n"
                 "  -c, --config FILE  configuration file (libconfig)\n"
                 "  -t, --test         check the configuration and exit 0 (valid) or 1\n"
                 "  -V, --version      print the version and exit\n"
                 "  -h, --help         this text\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"test", no_argument, NULL, 't'},
        {"version", no_argument, NULL, 'V'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* No fastbins: every PGresult allocates a 2 KiB block, and each such
     * request makes glibc consolidate the fastbins first (malloc_consolidate
     * was 9% of the loop in bench/sql). tcache still serves small sizes. */
    mallopt(M_MXFAST, 0);
    const char *path = NULL;
    int test_only = 0, c;
    while ((c = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': path = optarg; break;
        case 't': test_only = 1; break;
        case 'V': printf("jobd %s\n", PACKAGE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (!path || optind != argc) {
        usage(stderr);
        return 1;
    }

    static struct daemon d;
    char err[8192];
    d.config_path = path;
    if (config_load(path, &d.cfg, err, sizeof(err))) {
        fprintf(stderr, "%s", err);
        if (test_only)
            fprintf(stderr, "jobd: configuration %s is not valid\n", path);
        return 1;
    }
    if (test_only) {
        printf("jobd: configuration %s is valid\n", path);
        config_free(&d.cfg);
        return 0;
    }
    log_set_level(d.cfg.log_level);
    int rc = daemon_run(&d);
    config_free(&d.cfg);
    return rc;
}
