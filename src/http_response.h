/* http_response.h - what a remote server sends back to an http request: its
 * header lines (Retry-After) and body chunks, taken in as libcurl hands them
 * over, and the result object or error built from them once the transfer
 * ended. No transfer here (exec_http.c runs those): webhook URLs point at
 * servers jobd does not control, so this part is fuzzed on its own
 * (fuzz/fuzz_http_response.c). */
#ifndef JOBD_HTTP_RESPONSE_H
#define JOBD_HTTP_RESPONSE_H

#include <jansson.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "job.h"
#include "jsonw.h"

/* A server may not park a job for longer than a day. */
#define MAX_RETRY_AFTER_S 86400

/* How deep a "json" response may nest (jsonw.h says why). */
#define HTTP_JSON_MAX_NESTING JSONW_VALUE_MAX_NESTING

enum response_mode { RESP_TEXT, RESP_JSON, RESP_SHA256, RESP_DISCARD };

/* Text and json bodies stay in memory until the job's record is written:
 * what they hold now, and the most they may (http.max_batch_bytes for a
 * batch, INT64_MAX for one request). One per job, shared by its requests. */
struct http_budget {
    int64_t kept, max;
};

struct http_response {
    /* Set when the job is parsed. */
    enum response_mode mode;
    int64_t max_bytes;          /* 0: no limit */
    struct http_budget *budget;
    /* What came back in this attempt (http_response_reset() clears it). */
    char *buf;
    size_t len, cap;
    EVP_MD_CTX *sha;
    int64_t bytes;
    bool too_large, over_budget;
    int64_t retry_after_ms;
};

/* Before the transfer: -1 when the digest cannot be set up. */
int http_response_begin(struct http_response *r);
/* N bytes of body. false: the transfer must stop (over max_bytes or the
 * budget, which the flags say, or out of memory). */
bool http_response_body(struct http_response *r, const char *ptr, size_t n);
/* One header line as received (N bytes, not NUL-terminated, CRLF
 * included): a status line "HTTP/..." starts a new response (a redirect),
 * Retry-After is kept. */
void http_response_header(struct http_response *r, const char *ptr, size_t n);

/* The body was refused while it came (too_large, over_budget): true, with
 * ERR set naming SHOWN (the URL as messages show it). */
bool http_response_refused(const struct http_response *r, const char *shown, struct job_error *err);
/* A transfer that ended well with STATUS: the result object {status, bytes,
 * body|body_base64|json|sha256}, or NULL with ERR set (a status >= 400 when
 * RAISE_FOR_STATUS, a json body that does not parse, nests deeper than
 * HTTP_JSON_MAX_NESTING or, in a BATCH, would hold more than the budget once
 * parsed). */
json_t *http_response_result(struct http_response *r, long status, bool raise_for_status,
                             bool batch, const char *shown, struct job_error *err);
/* Done with the body: freed, and when the request FAILED, what it had
 * counted goes back to the budget. */
void http_response_end(struct http_response *r, bool failed);
/* Before another attempt, or to free it: mode, max_bytes and budget stay. */
void http_response_reset(struct http_response *r);

#endif
