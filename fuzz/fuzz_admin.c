/* fuzz_admin.c - libFuzzer target: what a client sends to the admin
 * listener (src/admin_request.c).
 *
 * The first byte sets how many bytes each read brings (1 .. 4096); the rest
 * is what the client sent. As in admin.c's conn_read(), admin_route() sees
 * the whole head buffered so far after every read, never more than
 * ADMIN_HEAD_MAX + 1 bytes (the read watermark), each time from a buffer of
 * exactly that size (ASan sees any read past it), until it chooses an
 * answer. That answer must not change as more bytes come, and must agree
 * with the request line.
 */
#include <stdlib.h>
#include <string.h>

#include "admin_request.h"
#include "support.h"

static enum admin_route route_of(const uint8_t *data, size_t len, bool *head)
{
    /* evbuffer_pullup()'s bytes: not NUL-terminated. */
    char *copy = malloc(len ? len : 1);
    FUZZ_CHECK(copy);
    memcpy(copy, data, len);
    enum admin_route route = admin_route(len ? copy : NULL, len, head);
    free(copy);
    return route;
}

static bool starts(const uint8_t *data, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && !memcmp(data, prefix, n);
}

/* METHOD then TARGET, ended by ' ' or '?'. */
static bool asks(const uint8_t *data, size_t len, const char *method, const char *target)
{
    size_t m = strlen(method), t = strlen(target);
    return len > m + 1 + t && starts(data, len, method) && data[m] == ' ' &&
           !memcmp(data + m + 1, target, t) && (data[m + 1 + t] == ' ' || data[m + 1 + t] == '?');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] * 16 + 1;
    data++;
    size--;
    size_t most = size < ADMIN_HEAD_MAX + 1 ? size : ADMIN_HEAD_MAX + 1;

    enum admin_route route = ADMIN_INCOMPLETE;
    bool head = false;
    size_t len = 0;
    do {
        len = most - len < step ? most : len + step;
        route = route_of(data, len, &head);
    } while (route == ADMIN_INCOMPLETE && len < most);

    if (route == ADMIN_INCOMPLETE) {
        /* All buffered and no end: the client is still sending. */
        FUZZ_CHECK(len <= ADMIN_HEAD_MAX);
        return 0;
    }
    /* Bytes after the answer was chosen do not change it (a pipelined
     * request, a body the listener discards). */
    bool head_again;
    FUZZ_CHECK(route_of(data, most, &head_again) == route && head_again == head);

    bool is_head = starts(data, len, "HEAD ");
    switch (route) {
    case ADMIN_INCOMPLETE:
        break;
    case ADMIN_TOO_LARGE:
        FUZZ_CHECK(len > ADMIN_HEAD_MAX && !head);
        break;
    case ADMIN_BAD_REQUEST:
        FUZZ_CHECK(!head);
        break;
    case ADMIN_NOT_ALLOWED:
        FUZZ_CHECK(!head && !starts(data, len, "GET ") && !is_head);
        break;
    case ADMIN_NOT_FOUND:
        FUZZ_CHECK(head == is_head && (is_head || starts(data, len, "GET ")));
        break;
    case ADMIN_HEALTHZ:
        FUZZ_CHECK(head == is_head);
        FUZZ_CHECK(asks(data, len, "GET", "/healthz") || asks(data, len, "HEAD", "/healthz"));
        break;
    case ADMIN_METRICS:
        FUZZ_CHECK(head == is_head);
        FUZZ_CHECK(asks(data, len, "GET", "/metrics") || asks(data, len, "HEAD", "/metrics"));
        break;
    }
    return 0;
}
