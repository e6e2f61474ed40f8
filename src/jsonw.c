/* jsonw.c - JSON text into a growable buffer (see jsonw.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonw.h"

static bool reserve(struct jbuf *b, size_t more)
{
    if (b->failed)
        return false;
    if (b->measure)
        return true;    /* nothing is written: no buffer to grow */
    if (b->len + more + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1) {
        if (cap > SIZE_MAX / 2) {
            b->failed = true;
            return false;
        }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void jbuf_raw(struct jbuf *b, const char *s, size_t n)
{
    if (!reserve(b, n))
        return;
    if (!b->measure)
        memcpy(b->p + b->len, s, n);
    b->len += n;
}

/* The escapes jansson writes: the short forms, else \u00XX (uppercase hex). */
static const char *const short_escape[32] = {
    ['\b'] = "\\b", ['\t'] = "\\t", ['\n'] = "\\n", ['\f'] = "\\f", ['\r'] = "\\r",
};

size_t jsonw_string_len(const char *s, size_t n)
{
    size_t out_len = n + 2;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            out_len += 1;
        else if (c < 0x20)
            out_len += short_escape[c] ? 1 : 5;
    }
    return out_len;
}

void jbuf_string(struct jbuf *b, const char *s, size_t n)
{
    /* The exact size first: reserving the worst case (6 bytes per byte)
     * would ask for 600 MB to write a 100 MB body. */
    size_t out_len = jsonw_string_len(s, n);
    if (out_len < n || !reserve(b, out_len)) {
        b->failed = true;
        return;
    }
    if (b->measure) {
        b->len += out_len;
        return;
    }
    char *out = b->p + b->len;
    *out++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *out++ = (char)c;
        } else if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char)c;
        } else if (short_escape[c]) {
            memcpy(out, short_escape[c], 2);
            out += 2;
        } else {
            static const char hex[] = "0123456789ABCDEF";
            memcpy(out, "\\u00", 4);
            out[4] = hex[c >> 4];
            out[5] = hex[c & 15];
            out += 6;
        }
    }
    *out++ = '"';
    b->len = (size_t)(out - b->p);
}

void jbuf_int(struct jbuf *b, int64_t v)
{
    char tmp[24], *end = tmp + sizeof(tmp), *p = end;
    /* Through unsigned, so INT64_MIN negates without overflow. */
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    jbuf_raw(b, p, (size_t)(end - p));
}

/* jansson's jsonp_dtostr(): %.17g, ".0" when it would read as an integer,
 * no '+' and no leading zeros in the exponent. jobd never calls setlocale(),
 * so the decimal point is always '.'. */
static void jbuf_real(struct jbuf *b, double v)
{
    char tmp[64];
    int n = snprintf(tmp, sizeof(tmp) - 2, "%.17g", v);
    if (n < 0 || n >= (int)sizeof(tmp) - 2) {
        b->failed = true;
        return;
    }
    if (!strchr(tmp, '.') && !strchr(tmp, 'e')) {
        memcpy(tmp + n, ".0", 3);
        n += 2;
    }
    char *e = strchr(tmp, 'e');
    if (e) {
        char *start = e + 1, *digits;
        if (*start == '+') {
            memmove(start, start + 1, strlen(start + 1) + 1);
        } else if (*start == '-') {
            start++;
        }
        digits = start;
        while (*digits == '0' && digits[1])
            digits++;
        if (digits != start)
            memmove(start, digits, strlen(digits) + 1);
        n = (int)strlen(tmp);
    }
    jbuf_raw(b, tmp, (size_t)n);
}

void jbuf_value(struct jbuf *b, const json_t *v)
{
    if (b->failed)
        return;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        size_t key_len;
        json_t *item;
        bool first = true;
        jbuf_lit(b, "{");
        json_object_keylen_foreach((json_t *)v, key, key_len, item) {
            if (!first)
                jbuf_lit(b, ",");
            first = false;
            jbuf_string(b, key, key_len);
            jbuf_lit(b, ":");
            jbuf_value(b, item);
        }
        jbuf_lit(b, "}");
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        jbuf_lit(b, "[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                jbuf_lit(b, ",");
            jbuf_value(b, json_array_get(v, i));
        }
        jbuf_lit(b, "]");
        break;
    }
    case JSON_STRING:
        jbuf_string(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        jbuf_int(b, (int64_t)json_integer_value(v));
        break;
    case JSON_REAL:
        jbuf_real(b, json_real_value(v));
        break;
    case JSON_TRUE:
        jbuf_lit(b, "true");
        break;
    case JSON_FALSE:
        jbuf_lit(b, "false");
        break;
    case JSON_NULL:
        jbuf_lit(b, "null");
        break;
    default:
        b->failed = true;
    }
}

char *jbuf_take(struct jbuf *b, size_t *len)
{
    char *text = NULL;
    if (!b->failed && reserve(b, 0)) {
        b->p[b->len] = '\0';
        text = b->p;
        if (len)
            *len = b->len;
    } else {
        free(b->p);
    }
    memset(b, 0, sizeof(*b));
    return text;
}

char *jsonw_dumps(const json_t *v, size_t *len)
{
    struct jbuf b = {0};
    jbuf_value(&b, v);
    return jbuf_take(&b, len);
}

/* How deep V nests (0: a scalar, 1: [] or {}), counted no further than
 * LIMIT + 1. An array's items and an object's values are walked alike: by
 * index, or by the object's iterator. */
static int nesting(const json_t *v, int limit)
{
    bool array = json_is_array(v);
    if (!array && !json_is_object(v))
        return 0;
    if (limit < 1)
        return 1;
    int most = 0;
    size_t i = 0;
    void *iter = array ? NULL : json_object_iter((json_t *)v);
    for (;;) {
        json_t *item = array ? json_array_get(v, i++) : json_object_iter_value(iter);
        if (!item || most >= limit)
            break;
        int n = nesting(item, limit - 1);
        most = n > most ? n : most;
        if (!array)
            iter = json_object_iter_next((json_t *)v, iter);
    }
    return most + 1;
}

bool jsonw_too_deep(const json_t *v, size_t text_len)
{
    return text_len > JSONW_VALUE_MAX_NESTING &&
           nesting(v, JSONW_VALUE_MAX_NESTING) > JSONW_VALUE_MAX_NESTING;
}
