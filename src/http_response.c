/* http_response.c - a response's headers and body, and the result built from
 * them (see http_response.h). Everything here comes from the remote server:
 * bounded by max_bytes and the job's budget as it arrives, and turned into
 * a result or an error, never into a crash or an unbounded record. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "encode.h"
#include "http_response.h"
#include "jsonw.h"

int http_response_begin(struct http_response *r)
{
    if (r->mode == RESP_SHA256) {
        r->sha = EVP_MD_CTX_new();
        if (!r->sha || !EVP_DigestInit_ex2(r->sha, EVP_sha256(), NULL))
            return -1;
    }
    return 0;
}

/* Append to a text or json body, within what the job may keep: every such
 * body of a batch stays in memory until its record is written, so their sum,
 * not just each one (max_bytes), is bounded. */
static bool keep(struct http_response *r, const char *ptr, size_t n)
{
    struct http_budget *b = r->budget;
    if ((int64_t)n > b->max - b->kept) {
        r->over_budget = true;
        return false;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 16384;
        while (cap < r->len + n + 1)
            cap *= 2;
        char *buf = realloc(r->buf, cap);
        if (!buf)
            return false;
        r->buf = buf;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, ptr, n);
    r->len += n;
    b->kept += (int64_t)n;
    return true;
}

bool http_response_body(struct http_response *r, const char *ptr, size_t n)
{
    r->bytes += (int64_t)n;
    /* Counted here: 7.88's MAXFILESIZE misses bodies of unknown length. */
    if (r->max_bytes && r->bytes > r->max_bytes) {
        r->too_large = true;
        return false;
    }
    switch (r->mode) {
    case RESP_TEXT:
    case RESP_JSON:
        if (!keep(r, ptr, n))
            return false;
        break;
    case RESP_SHA256:
        EVP_DigestUpdate(r->sha, ptr, n);
        break;
    case RESP_DISCARD: break;
    }
    return true;
}

/* Clamped before multiplying: Retry-After: 99999999999999999 (or strtoll's
 * LLONG_MAX for longer ones) times 1000 overflows, which is undefined, and in
 * practice wrapped to a negative wait that dropped the server's request. */
static int64_t retry_after_ms(long long secs)
{
    if (secs > MAX_RETRY_AFTER_S)
        secs = MAX_RETRY_AFTER_S;
    return (int64_t)secs * 1000;
}

/* Retry-After: seconds or an HTTP date. A new response (redirect) resets it. */
void http_response_header(struct http_response *r, const char *ptr, size_t n)
{
    if (n > 5 && !strncmp(ptr, "HTTP/", 5)) {
        r->retry_after_ms = 0;
    } else if (n > 12 && !strncasecmp(ptr, "retry-after:", 12)) {
        char value[128];
        size_t len = n - 12 < sizeof(value) - 1 ? n - 12 : sizeof(value) - 1;
        memcpy(value, ptr + 12, len);
        value[len] = '\0';
        char *end;
        long long secs = strtoll(value, &end, 10);
        while (*end == ' ' || *end == '\r' || *end == '\n')
            end++;
        if (!*end && secs >= 0) {
            r->retry_after_ms = retry_after_ms(secs);
        } else {
            time_t when = curl_getdate(value, NULL), now = time(NULL);
            if (when > 0 && when > now)
                r->retry_after_ms = retry_after_ms((long long)(when - now));
        }
    }
}

bool http_response_refused(const struct http_response *r, const char *shown, struct job_error *err)
{
    if (r->too_large) {
        job_error_set(err, ERR_TOO_LARGE, "%s: response larger than max_bytes (%lld)", shown,
                      (long long)r->max_bytes);
    } else if (r->over_budget) {
        job_error_set(err, ERR_TOO_LARGE,
                      "%s: the batch's text and json responses would hold more than "
                      "http.max_batch_bytes (%lld)",
                      shown, (long long)r->budget->max);
    }
    return r->too_large || r->over_budget;
}

static json_t *hex_digest(EVP_MD_CTX *ctx)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    if (!EVP_DigestFinal_ex(ctx, md, &len))
        return NULL;
    hex_encode(md, len, hex);
    return json_string(hex);
}

/* Roughly what a parsed document holds: each value a node (jansson's and
 * malloc's share), each array slot or object key its own, and the text of
 * strings and keys. true, false and null are shared singletons. */
static int64_t json_cost(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        size_t key_len;
        json_t *item;
        int64_t cost = 96;
        json_object_keylen_foreach((json_t *)v, key, key_len, item)
            cost += 64 + (int64_t)key_len + json_cost(item);
        return cost;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *item;
        int64_t cost = 64;
        json_array_foreach(v, i, item)
            cost += 8 + json_cost(item);
        return cost;
    }
    case JSON_STRING: return 48 + (int64_t)json_string_length(v);
    case JSON_INTEGER:
    case JSON_REAL: return 32;
    default: return 0;
    }
}

json_t *http_response_result(struct http_response *r, long status, bool raise_for_status,
                             bool batch, const char *shown, struct job_error *err)
{
    if (status >= 400 && raise_for_status) {
        job_error_set(err, ERR_HTTP_STATUS, "%s: HTTP status %ld", shown, status);
        err->http_status = (int)status;
        err->retry_after_ms = r->retry_after_ms;
        return NULL;
    }
    json_t *res = json_pack("{s:i, s:I}", "status", (int)status, "bytes", (json_int_t)r->bytes);
    if (r->mode == RESP_TEXT) {
        json_set_text_or_base64(res, "body", "body_base64", r->buf, r->len);
    } else if (r->mode == RESP_JSON) {
        json_error_t jerr;
        json_t *doc =
            json_loadb(r->buf ? r->buf : "", r->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        bool too_deep = doc && jsonw_too_deep(doc, r->len);
        /* Parsed, a body takes far more than its text ("[0,0,...]": ~20x):
         * a batch is charged what the document holds. */
        int64_t extra = doc && batch && !too_deep ? json_cost(doc) - (int64_t)r->len : 0;
        if (too_deep) {
            json_decref(doc);
            json_decref(res);
            res = NULL;
            job_error_set(err, ERR_TOO_LARGE,
                          "%s: the JSON response nests deeper than the %d levels a result "
                          "record can hold",
                          shown, HTTP_JSON_MAX_NESTING);
        } else if (doc && extra > r->budget->max - r->budget->kept) {
            json_decref(doc);
            json_decref(res);
            res = NULL;
            job_error_set(err, ERR_TOO_LARGE,
                          "%s: the batch's text and json responses would hold more than "
                          "http.max_batch_bytes (%lld) once parsed",
                          shown, (long long)r->budget->max);
        } else if (doc) {
            r->budget->kept += extra;
            json_object_set_new(res, "json", doc);
        } else {
            json_decref(res);
            res = NULL;
            job_error_set(err, ERR_HTTP_ERROR, "%s: response is not JSON: %s", shown, jerr.text);
        }
    } else if (r->mode == RESP_SHA256) {
        json_object_set_new(res, "sha256", hex_digest(r->sha));
    }
    return res;
}

void http_response_end(struct http_response *r, bool failed)
{
    /* Keep only the result: bodies can be large. A failed request keeps
     * nothing, so what it had counted goes back to the batch. */
    if (failed)
        r->budget->kept -= (int64_t)r->len;
    free(r->buf);
    r->buf = NULL;
    r->len = r->cap = 0;
}

void http_response_reset(struct http_response *r)
{
    free(r->buf);
    r->buf = NULL;
    r->len = r->cap = 0;
    r->bytes = 0;
    r->too_large = r->over_budget = false;
    r->retry_after_ms = 0;
    EVP_MD_CTX_free(r->sha);
    r->sha = NULL;
}
