/* send_fail_shim.c - LD_PRELOAD for the outcome tests: a command hiredis
 * cannot take, as when it runs out of memory.
 *
 * While the file SEND_FAIL_WHILE exists, redisAsyncFormattedCommand() (how
 * jobd queues the MULTI and each command of an outcome transaction) and
 * redisAsyncCommandArgv() (how it sends every other command, the EXEC among
 * them) refuse a command whose name is SEND_FAIL_COMMAND (default SET) and
 * whose text contains SEND_FAIL_MARK (default: any), returning REDIS_ERR
 * without sending it: what hiredis does when it cannot allocate the
 * command's buffer or callback. Every other command passes through. Built
 * by the tests with `cc -shared -fPIC`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <hiredis/async.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int formatted_fn(redisAsyncContext *, redisCallbackFn *, void *, const char *, size_t);
typedef int argv_fn(redisAsyncContext *, redisCallbackFn *, void *, int, const char **,
                    const size_t *);

static int refused(const char *cmd, size_t len)
{
    const char *flag = getenv("SEND_FAIL_WHILE"), *name = getenv("SEND_FAIL_COMMAND"),
               *mark = getenv("SEND_FAIL_MARK");
    char head[64];
    if (!flag || access(flag, F_OK))
        return 0;
    if (!name)
        name = "SET";
    /* The command's name is its first bulk string: "*<argc>\r\n$<len>\r\n<name>\r\n". */
    const char *p = memchr(cmd, '\n', len);
    int n = snprintf(head, sizeof(head), "$%zu\r\n%s\r\n", strlen(name), name);
    if (!p || n <= 0 || (size_t)n >= sizeof(head) || (size_t)(cmd + len - (p + 1)) < (size_t)n ||
        memcmp(p + 1, head, (size_t)n))
        return 0;
    return !mark || memmem(cmd, len, mark, strlen(mark)) != NULL;
}

int redisAsyncFormattedCommand(redisAsyncContext *ac, redisCallbackFn *fn, void *privdata,
                               const char *cmd, size_t len)
{
    static formatted_fn *real;
    if (!real)
        real = (formatted_fn *)dlsym(RTLD_NEXT, "redisAsyncFormattedCommand");
    if (refused(cmd, len))
        return REDIS_ERR;
    return real(ac, fn, privdata, cmd, len);
}

int redisAsyncCommandArgv(redisAsyncContext *ac, redisCallbackFn *fn, void *privdata, int argc,
                          const char **argv, const size_t *argvlen)
{
    static argv_fn *real;
    if (!real)
        real = (argv_fn *)dlsym(RTLD_NEXT, "redisAsyncCommandArgv");
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    int no = len > 0 && refused(cmd, (size_t)len);
    free(cmd);
    return no ? REDIS_ERR : real(ac, fn, privdata, argc, argv, argvlen);
}
