/* fuzz_http_response.c - libFuzzer target: what a remote server sends back
 * to an http job (src/http_response.c).
 *
 * Webhook URLs point at servers jobd does not control. libcurl itself is not
 * the target: the input is what it hands to exec_http.c's callbacks. Three
 * bytes choose how the job asked (response mode, raise_for_status, a batch,
 * max_bytes, the batch's budget, the size of the body's chunks); the rest is
 * header lines up to the first empty one, each given with its line end as
 * libcurl gives it, then the body, in chunks. The status is the last status
 * line's, as CURLINFO_RESPONSE_CODE says. The outcome goes through the same
 * functions as a finished transfer, then into the result record the daemon
 * would store, which support.c checks.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "executor.h"
#include "http_response.h"
#include "result.h"
#include "support.h"

#define SHOWN "http://fuzz.example/hook"

/* "HTTP/1.1 503 ...": 503; -1 when the line is no status line. */
static long status_of(const char *line, size_t n)
{
    if (n < 5 || strncmp(line, "HTTP/", 5))
        return -1;
    size_t i = 5;
    while (i < n && line[i] != ' ')
        i++;
    while (i < n && line[i] == ' ')
        i++;
    if (i + 3 > n || !isdigit((unsigned char)line[i]) || !isdigit((unsigned char)line[i + 1]) ||
        !isdigit((unsigned char)line[i + 2]))
        return -1;
    return (line[i] - '0') * 100 + (line[i + 1] - '0') * 10 + (line[i + 2] - '0');
}

/* How deep V nests: 0 for a scalar, 1 for [] or {}. */
static int nesting(const json_t *v)
{
    int most = 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item)
        {
            int n = nesting(item);
            most = n > most ? n : most;
        }
        return most + 1;
    }
    if (json_is_object(v)) {
        const char *key;
        json_t *item;
        json_object_foreach((json_t *)v, key, item)
        {
            int n = nesting(item);
            most = n > most ? n : most;
        }
        return most + 1;
    }
    return 0;
}

static bool is_hex64(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (; *s; s++)
        if (!strchr("0123456789abcdef", *s))
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct daemon *d = fuzz_daemon(0);
    if (size < 3)
        return 0;
    const uint8_t how = data[0], max_sel = data[1], budget_sel = data[2];
    data += 3;
    size -= 3;

    enum response_mode mode = (enum response_mode)(how & 3);
    bool raise_for_status = how & 4, batch = how & 8;
    size_t chunk = (size_t)1 << (how >> 4); /* 1 byte .. 32 KiB */
    bool kept = mode == RESP_TEXT || mode == RESP_JSON;

    /* As parse_request(): kept bodies always have a cap (http.max_bytes or
     * the job's smaller one), streamed ones only when the job gives one. */
    int64_t max_bytes = max_sel ? (int64_t)max_sel * 37 : kept ? d->cfg.http_max_bytes : 0;
    /* One request alone may keep anything; a batch's budget is shared, and
     * other requests may have taken part of it already. */
    struct http_budget budget = {.kept = 0, .max = INT64_MAX};
    if (batch) {
        budget.kept = (int64_t)(budget_sel & 15) * 64;
        budget.max = budget.kept + (int64_t)(budget_sel >> 4) * 512 + 1;
    }
    const int64_t kept_before = budget.kept;

    struct http_response r = {.mode = mode, .max_bytes = max_bytes, .budget = &budget};
    FUZZ_CHECK(http_response_begin(&r) == 0);

    /* Header lines, as many responses as the input holds (redirects, 100
     * Continue); the empty line ends them. */
    long status = 0;
    size_t at = 0;
    while (at < size) {
        const uint8_t *nl = memchr(data + at, '\n', size - at);
        size_t n = nl ? (size_t)(nl - (data + at)) + 1 : size - at;
        const char *line = (const char *)data + at;
        at += n;
        if ((n == 1 && line[0] == '\n') || (n == 2 && line[0] == '\r' && line[1] == '\n'))
            break;
        http_response_header(&r, line, n);
        long s = status_of(line, n);
        if (s >= 0)
            status = s;
        FUZZ_CHECK(r.retry_after_ms >= 0 && r.retry_after_ms <= MAX_RETRY_AFTER_S * 1000LL);
        if (s >= 0)
            FUZZ_CHECK(r.retry_after_ms == 0);
    }

    /* The body, until it is refused as libcurl's write callback would be. */
    int64_t fed = 0;
    bool stopped = false;
    while (at < size && !stopped) {
        size_t n = size - at < chunk ? size - at : chunk;
        fed += (int64_t)n;
        stopped = !http_response_body(&r, (const char *)data + at, n);
        at += n;
        FUZZ_CHECK(r.bytes == fed);
        FUZZ_CHECK(budget.kept >= kept_before && budget.kept <= budget.max);
        FUZZ_CHECK(!max_bytes || (int64_t)r.len <= max_bytes);
        FUZZ_CHECK(kept ? (int64_t)r.len == budget.kept - kept_before : r.len == 0);
    }
    FUZZ_CHECK(!stopped || r.too_large || r.over_budget); /* no allocation failed */
    FUZZ_CHECK(!r.too_large || (max_bytes && r.bytes > max_bytes));

    /* As request_outcome() for a transfer libcurl ended with CURLE_OK, or
     * with the write callback's error when the body was refused. */
    struct job_error err;
    memset(&err, 0, sizeof(err));
    json_t *res = NULL;
    if (!http_response_refused(&r, SHOWN, &err))
        res = http_response_result(&r, status, raise_for_status, batch, SHOWN, &err);
    bool failed = res == NULL;
    size_t len = r.len;
    http_response_end(&r, failed);
    FUZZ_CHECK(r.buf == NULL && r.len == 0);
    if (failed) {
        FUZZ_CHECK(err.code && err.message[0]);
        FUZZ_CHECK(budget.kept == kept_before); /* all of it given back */
        if (!strcmp(err.code, ERR_HTTP_STATUS)) {
            FUZZ_CHECK(raise_for_status && status >= 400 && err.http_status == status);
            FUZZ_CHECK(err.retry_after_ms == r.retry_after_ms);
        }
    } else {
        FUZZ_CHECK(json_integer_value(json_object_get(res, "status")) == status);
        FUZZ_CHECK(json_integer_value(json_object_get(res, "bytes")) == r.bytes);
        FUZZ_CHECK(!max_bytes || r.bytes <= max_bytes);
        /* The body's text stays counted, except a batch's parsed json,
         * charged what the document holds instead (less, for a body of
         * mostly white space). */
        if (mode == RESP_JSON && batch)
            FUZZ_CHECK(budget.kept >= kept_before);
        else
            FUZZ_CHECK(budget.kept == kept_before + (int64_t)(kept ? len : 0));
        FUZZ_CHECK(budget.kept <= budget.max);
        json_t *body = json_object_get(res, "body"), *b64 = json_object_get(res, "body_base64");
        json_t *doc = json_object_get(res, "json"), *sha = json_object_get(res, "sha256");
        switch (mode) {
        case RESP_TEXT:
            FUZZ_CHECK(!!body + !!b64 == 1 && !doc && !sha);
            FUZZ_CHECK(body ? json_string_length(body) == len
                            : json_string_length(b64) == (len + 2) / 3 * 4);
            break;
        case RESP_JSON:
            FUZZ_CHECK(doc && !body && !b64 && !sha);
            break;
        case RESP_SHA256:
            FUZZ_CHECK(json_is_string(sha) && is_hex64(json_string_value(sha)));
            FUZZ_CHECK(!body && !b64 && !doc);
            break;
        case RESP_DISCARD:
            FUZZ_CHECK(json_object_size(res) == 2);
            break;
        }
    }
    http_response_reset(&r);
    FUZZ_CHECK(r.sha == NULL && r.bytes == 0 && !r.too_large && !r.over_budget);

    /* The record the daemon would store for a job of this one request. */
    struct job job;
    memset(&job, 0, sizeof(job));
    job.d = d;
    job.exec = &http_executor;
    job.type = "http";
    snprintf(job.id, sizeof(job.id), "fuzz-http");
    job.attempts = 1;
    job.status = failed ? JOB_FAILED : JOB_SUCCEEDED;
    job.result = res;
    if (failed)
        job.error = err;
    size_t written = result_record_size(d, &job);
    FUZZ_CHECK(written > 0);
    /* Nothing in it grows past the body it came from: JSON escapes (a
     * control character's \u0001, a short real's 17 digits) at most 6x. */
    FUZZ_CHECK(written <= 6 * len + 4096);
    /* Read back as jansson reads it (jobctl, a group rebuilding its
     * child's record): a json body nested deeper than the record can hold
     * was stored unreadable until http_response_result() refused it. */
    json_t *rec = result_record(d, &job);
    FUZZ_CHECK(rec);
    fuzz_check_record(&job, rec);
    json_decref(rec);
    if (!failed && mode == RESP_JSON)
        FUZZ_CHECK(nesting(json_object_get(res, "json")) <= HTTP_JSON_MAX_NESTING);
    json_decref(res);
    return 0;
}
