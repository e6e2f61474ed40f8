/* send_fail_shim.c - LD_PRELOAD for the outcome tests: a command hiredis
 * cannot take, as when it runs out of memory.
 *
 * While the file SEND_FAIL_WHILE exists, redisAsyncFormattedCommand() (how
 * jobd queues each command of an outcome transaction) refuses a SET whose
 * text contains SEND_FAIL_MARK, returning REDIS_ERR without sending it:
 * what hiredis does when it cannot allocate the command's buffer or
 * callback. Every other command passes through. Built by the tests with
 * `cc -shared -fPIC`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <hiredis/async.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int formatted_fn(redisAsyncContext *, redisCallbackFn *, void *, const char *, size_t);

static const char set_head[] = "*5\r\n$3\r\nSET\r\n";

int redisAsyncFormattedCommand(redisAsyncContext *ac, redisCallbackFn *fn, void *privdata,
                               const char *cmd, size_t len)
{
    static formatted_fn *real;
    if (!real)
        real = (formatted_fn *)dlsym(RTLD_NEXT, "redisAsyncFormattedCommand");
    const char *mark = getenv("SEND_FAIL_MARK"), *flag = getenv("SEND_FAIL_WHILE");
    if (mark && flag && len > sizeof(set_head) && !memcmp(cmd, set_head, sizeof(set_head) - 1) &&
        memmem(cmd, len, mark, strlen(mark)) && access(flag, F_OK) == 0)
        return REDIS_ERR;
    return real(ac, fn, privdata, cmd, len);
}
