/* admin_request.c - a request head to the answer it gets (see
 * admin_request.h). */
#include <string.h>

#include "admin_request.h"

/* Copy the run of LINE up to the first of STOP into OUT (SIZE bytes); the
 * rest of LINE after it, or NULL when the run is empty or does not fit. */
static const char *take_until(const char *line, const char *stop, char *out, size_t size)
{
    size_t n = strcspn(line, stop);
    if (!n || n >= size)
        return NULL;
    memcpy(out, line, n);
    out[n] = '\0';
    return line + n;
}

/* "METHOD path[?query] HTTP/1.x": METHOD and the path, the query ignored
 * whatever its length (sscanf's "%255s" refused a long one, and its "%d"
 * overflowed on "HTTP/1.99999999999"). */
static bool parse_request_line(const char *line, char *method, size_t method_size, char *path,
                               size_t path_size)
{
    const char *p = take_until(line, " ", method, method_size);
    if (!p || *p++ != ' ' || !(p = take_until(p, "? ", path, path_size)))
        return false;
    p += strcspn(p, " "); /* the query */
    if (strncmp(p, " HTTP/1.", 8))
        return false;
    p += 8;
    size_t digits = strspn(p, "0123456789");
    return digits > 0 && p[digits] == '\0';
}

enum admin_route admin_route(const char *buf, size_t len, bool *head)
{
    *head = false;
    if (!buf || (!memmem(buf, len, "\n\r\n", 3) && !memmem(buf, len, "\n\n", 2)))
        return len > ADMIN_HEAD_MAX ? ADMIN_TOO_LARGE : ADMIN_INCOMPLETE;
    /* The request line whole, however long its query: a cut one lost its
     * " HTTP/1.1" and was refused. A head past ADMIN_HEAD_MAX has its end
     * past the first ADMIN_HEAD_MAX + 1 bytes, which is all the listener
     * buffers, so it never gets here. */
    char line[ADMIN_HEAD_MAX + 1];
    size_t n = strcspn(buf, "\r\n"); /* the head holds a newline: n < len */
    memcpy(line, buf, n < sizeof(line) ? n : sizeof(line) - 1);
    line[n < sizeof(line) ? n : sizeof(line) - 1] = '\0';

    char method[8], target[256];
    if (!parse_request_line(line, method, sizeof(method), target, sizeof(target)))
        return ADMIN_BAD_REQUEST;
    *head = !strcmp(method, "HEAD");
    if (!*head && strcmp(method, "GET"))
        return ADMIN_NOT_ALLOWED;
    if (!strcmp(target, "/healthz"))
        return ADMIN_HEALTHZ;
    if (!strcmp(target, "/metrics"))
        return ADMIN_METRICS;
    return ADMIN_NOT_FOUND;
}
