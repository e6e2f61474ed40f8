/* test_config.c - the settings table: defaults, the example file, and every
 * kind of mistake an operator can make, each reported with file:line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "log.h"

static char path[64];

static void write_file(const char *text)
{
    snprintf(path, sizeof(path), "/tmp/jobd-test-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

/* Load TEXT; return 0/-1 and the error text in err. */
static int load(const char *text, struct config *cfg, char *err, size_t len)
{
    write_file(text);
    int rc = config_load(path, cfg, err, len);
    unlink(path);
    return rc;
}

static void expect_error(const char *text, const char *fragment)
{
    struct config cfg;
    char err[4096];
    assert_int_equal(load(text, &cfg, err, sizeof(err)), -1);
    if (!strstr(err, fragment))
        fail_msg("error \"%s\" lacks \"%s\"", err, fragment);
    if (!strstr(err, path))
        fail_msg("error \"%s\" does not name the file", err);
}

static void test_defaults(void **state)
{
    struct config cfg;
    assert_int_equal(config_defaults(&cfg), 0);
    assert_string_equal(cfg.redis_host, "127.0.0.1");
    assert_int_equal(cfg.redis_port, 6379);
    assert_string_equal(cfg.ns, "jobd");
    assert_int_equal(cfg.nchannels, 1);
    assert_string_equal(cfg.channels[0], "jobd:jobs");
    assert_int_equal(cfg.nstreams, 1);
    assert_string_equal(cfg.streams[0], "jobd:queue");
    assert_int_equal(cfg.max_inflight, 1000);
    assert_int_equal(cfg.max_group_children, 1000);
    assert_int_equal(cfg.max_job_bytes, 1048576);
    assert_true(cfg.max_held_bytes == 256LL << 20);
    assert_int_equal(cfg.timeout_ms, 30000);
    assert_int_equal(cfg.result_ttl, 3600);
    assert_int_equal(cfg.cancel_ttl, CANCEL_TTL_DEFAULT);
    assert_int_equal(cfg.retry.attempts, 3);
    assert_int_equal(cfg.retry.delay_ms, 1000);
    assert_true(cfg.retry.backoff == 2.0);
    assert_int_equal(cfg.retry.max_delay_ms, 60000);
    assert_true(cfg.retry.jitter);
    assert_int_equal(cfg.threads, 0);
    assert_int_equal(cfg.http_concurrency, 10);
    assert_false(cfg.http_allow_private);
    assert_string_equal(cfg.pg_conninfo, "");
    assert_string_equal(cfg.files_root, "");
    assert_string_equal(cfg.admin_listen, "127.0.0.1:9187");
    assert_int_equal(cfg.admin_max_connections, 64);
    assert_int_equal(cfg.drain_ms, 25000);
    assert_int_equal(cfg.log_level, LOG_INFO);
    assert_string_equal(cfg.worker_name, "");
    config_free(&cfg);
}

static void test_example_file_loads(void **state)
{
    struct config cfg;
    char err[4096];
    const char *srcdir = getenv("JOBD_SRCDIR");
    char file[1024];
    snprintf(file, sizeof(file), "%s/etc/jobd.conf", srcdir ? srcdir : ".");
    if (config_load(file, &cfg, err, sizeof(err)))
        fail_msg("%s", err);
    const struct named_query *q = config_query(&cfg, "account_balance");
    assert_non_null(q);
    assert_string_equal(q->sql, "SELECT abalance FROM pgbench_accounts WHERE aid = $1");
    assert_int_equal(q->session, 0);    /* pipelined as it is, nothing sent after it */
    assert_null(config_query(&cfg, "nope"));
    config_free(&cfg);
}

static void test_namespace_sets_default_names(void **state)
{
    struct config cfg;
    char err[4096];
    assert_int_equal(load("redis = { namespace = \"acme\"; };\n", &cfg, err, sizeof(err)), 0);
    assert_string_equal(cfg.channels[0], "acme:jobs");
    assert_string_equal(cfg.streams[0], "acme:queue");
    config_free(&cfg);
}

static void test_values_and_int64(void **state)
{
    struct config cfg;
    char err[4096];
    assert_int_equal(load("limits = { max_inflight = 7; max_job_bytes = 2048L; "
                          "max_group_children = 3; max_held_bytes = 8589934592L; };\n"
                          "jobs = { retry = { backoff = 3; jitter = false; }; };\n"
                          "intake = { channels = [ \"a:*\", \"b\" ]; streams = [ \"s1\", \"s2\" ]; };\n"
                          "log = { level = \"debug\"; };\n",
                          &cfg, err, sizeof(err)),
                     0);
    assert_int_equal(cfg.max_inflight, 7);
    assert_int_equal(cfg.max_group_children, 3);
    assert_int_equal(cfg.max_job_bytes, 2048);
    assert_true(cfg.max_held_bytes == 8LL << 30);
    assert_true(cfg.retry.backoff == 3.0);
    assert_false(cfg.retry.jitter);
    assert_int_equal(cfg.nchannels, 2);
    assert_string_equal(cfg.channels[0], "a:*");
    assert_int_equal(cfg.nstreams, 2);
    assert_string_equal(cfg.streams[1], "s2");
    assert_int_equal(cfg.log_level, LOG_DEBUG);
    config_free(&cfg);
}

static void test_range_errors(void **state)
{
    expect_error("\n\nlimits = { max_inflight = 0; };\n",
                 ":3: limits.max_inflight: must be 1..1000000, got 0");
    expect_error("redis = { port = 70000; };\n", "redis.port: must be 1..65535, got 70000");
    expect_error("limits = { max_group_children = 0; };\n",
                 "limits.max_group_children: must be 1..1000000, got 0");
    expect_error("limits = { max_held_bytes = 65535; };\n",
                 "limits.max_held_bytes: must be 65536..68719476736, got 65535");
    expect_error("limits = { max_held_bytes = 68719476737L; };\n",
                 "limits.max_held_bytes: must be 65536..68719476736, got 68719476737");
    expect_error("jobs = { retry = { backoff = 0.5; }; };\n", "jobs.retry.backoff: must be");
    expect_error("intake = { streams = [ ]; };\n", "intake.streams: must hold 1..");
}

static void test_type_errors(void **state)
{
    expect_error("limits = { max_inflight = \"many\"; };\n",
                 "limits.max_inflight: expected an integer, got a string");
    expect_error("limits = { max_inflight = 1.5; };\n",
                 "limits.max_inflight: expected an integer, got a number");
    expect_error("http = { allow_private = 1; };\n", "http.allow_private: expected true or false");
    expect_error("intake = { channels = \"jobd:jobs\"; };\n",
                 "intake.channels: expected a list of strings");
    expect_error("log = { level = \"loud\"; };\n", "log.level: must be debug");
}

static void test_unknown_settings(void **state)
{
    expect_error("redis = { prot = 1; };\n", ":1: redis.prot: unknown setting");
    expect_error("jobs = { retry = { tries = 2; }; };\n", "jobs.retry.tries: unknown setting");
    expect_error("a = 1;\nbogus = { x = 1; };\n", ":2: bogus: unknown setting");
}

static void test_every_problem_reported(void **state)
{
    struct config cfg;
    char err[4096];
    assert_int_equal(load("redis = { prot = 1; port = 0; };\n", &cfg, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "redis.prot"));
    assert_non_null(strstr(err, "redis.port"));
}

static void test_syntax_error_names_line(void **state)
{
    expect_error("redis = {\n  port = 6379;\n  host = ;\n};\n", ":3:");
}

static void test_host_must_be_numeric(void **state)
{
    expect_error("redis = { host = \"redis.example\"; };\n", "redis.host: must be a numeric IP");
    struct config cfg;
    char err[4096];
    assert_int_equal(load("redis = { host = \"::1\"; };\n", &cfg, err, sizeof(err)), 0);
    config_free(&cfg);
}

static void test_other_checks(void **state)
{
    expect_error("redis = { namespace = \"a b\"; };\n", "redis.namespace: must be characters");
    expect_error("worker = { name = \"w*\"; };\n",
                 "worker.name: must be characters of [A-Za-z0-9._:-], got '*' at position 2");
    expect_error("worker = { name = \"w\\n\"; };\n", "got byte 0x0a at position 2");
    expect_error("admin = { listen = \"localhost:80\"; };\n", "admin.listen: must be");
    expect_error("admin = { max_connections = 0; };\n",
                 "admin.max_connections: must be 1..10000, got 0");
    expect_error("postgres = { min_size = 9; max_size = 3; };\n",
                 "postgres.min_size: must not exceed");
    expect_error("postgres = { queries = { q = 5; }; };\n", "postgres.queries.q: expected");
}

static void test_restart_needed(void **state)
{
    struct config a, b;
    char err[4096], names[512];
    assert_int_equal(load("redis = { port = 1000; };\n"
                          "limits = { max_inflight = 5; max_held_bytes = 1048576; };\n",
                          &a, err, sizeof(err)),
                     0);
    assert_int_equal(load("redis = { port = 2000; };\n"
                          "limits = { max_inflight = 9; max_held_bytes = 2097152; };\n",
                          &b, err, sizeof(err)),
                     0);
    assert_int_equal(config_restart_needed(&a, &b, names, sizeof(names)), 1);
    assert_string_equal(names, "redis.port");
    config_keep_restart_only(&b, &a);
    assert_int_equal(b.redis_port, 1000);   /* kept */
    assert_int_equal(b.max_inflight, 9);    /* reloaded */
    assert_true(b.max_held_bytes == 2097152);   /* reloaded */
    config_free(&a);
    config_free(&b);
}

/* A file @include'd by a relative name is found beside the main file, from
 * whatever directory jobd runs in (systemd: /), and a mistake in it names
 * the included file, not the main one. */
static void test_include_is_found_and_named(void **state)
{
    char dir[] = "/tmp/jobd-test-include-XXXXXX", main_file[96], inc[96], cwd[4096], err[4096];
    assert_non_null(mkdtemp(dir));
    snprintf(main_file, sizeof(main_file), "%s/jobd.conf", dir);
    snprintf(inc, sizeof(inc), "%s/limits.conf", dir);
    FILE *f = fopen(main_file, "w");
    assert_non_null(f);
    fputs("redis = { port = 6380; };\n@include \"limits.conf\"\n", f);
    fclose(f);
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir("/"), 0);

    struct config cfg;
    for (int bad = 0; bad < 2; bad++) {
        f = fopen(inc, "w");
        assert_non_null(f);
        fputs(bad ? "# a comment\nlimits = { max_inflight = 0; };\n"
                  : "limits = { max_inflight = 7; };\n", f);
        fclose(f);
        int rc = config_load(main_file, &cfg, err, sizeof(err));
        if (!bad) {
            assert_int_equal(rc, 0);
            assert_int_equal(cfg.max_inflight, 7);
            assert_int_equal(cfg.redis_port, 6380);
            config_free(&cfg);
            continue;
        }
        assert_int_equal(rc, -1);
        char want[256];
        snprintf(want, sizeof(want), "%s:2: limits.max_inflight: must be", inc);
        if (!strstr(err, want))
            fail_msg("error \"%s\" lacks \"%s\"", err, want);
    }
    assert_int_equal(chdir(cwd), 0);
    unlink(inc);
    unlink(main_file);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_example_file_loads),
        cmocka_unit_test(test_namespace_sets_default_names),
        cmocka_unit_test(test_values_and_int64),
        cmocka_unit_test(test_range_errors),
        cmocka_unit_test(test_type_errors),
        cmocka_unit_test(test_unknown_settings),
        cmocka_unit_test(test_every_problem_reported),
        cmocka_unit_test(test_syntax_error_names_line),
        cmocka_unit_test(test_host_must_be_numeric),
        cmocka_unit_test(test_other_checks),
        cmocka_unit_test(test_restart_needed),
        cmocka_unit_test(test_include_is_found_and_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
