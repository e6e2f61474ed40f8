/* fuzz_intake.c - libFuzzer target: stream entries as Redis sends them.
 *
 * The input is raw RESP, the bytes a Redis server writes on the stream or
 * command connection. hiredis's own reader turns it into redisReply trees,
 * exactly as on a live connection, and every array in each tree is handed to
 * intake_parse_entry(): that covers an entry alone, an XCLAIM reply (a list
 * of entries), an XREADGROUP reply ([[stream, [entry...]]...]) and any shape
 * a broken or hostile server could send instead. Each entry it accepts is
 * then taken as runner_accept() takes it: its fields copied and its "job"
 * parsed as an envelope with the queued_at and attempts the entry carried.
 *
 * The same bytes then go through resp_filter.h as on the stream and command
 * connections, with a limit taken from the input's last byte (so the seeds
 * are read as they are, and also with their longer strings dropped): fed
 * whole and fed in pieces (sized by the first byte) the output is the same,
 * no string hiredis reads from it is over the limit (a filter that stops
 * the stream passes nothing after that point), and its replies are taken
 * as above. Three times: with no arrays counted, as on the command
 * connection (fields arrays REDIS_LOOP_CLAIMED_FIELDS_DEPTH deep: XCLAIM's
 * and XRANGE's entries) and as on the stream connection (fields arrays
 * REDIS_LOOP_FIELDS_DEPTH deep: XREADGROUP's); where counted, no fields
 * array hiredis reads has more than REDIS_LOOP_MAX_ENTRY_FIELDS fields.
 */
#include <hiredis/hiredis.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "intake.h"
#include "redis_loop.h"
#include "resp_filter.h"
#include "runner.h"
#include "support.h"

/* hiredis 0.14.1 allocates an array's element pointers as soon as it reads
 * the header "*N": N up to INT_MAX asks for 16 GiB before any element came
 * (fixed upstream by redisReader.maxelements in 1.0.1). That is the
 * library's, not jobd's, and would only make every run an out-of-memory
 * report, so arrays are capped here at what a real reply can hold. */
#define MAX_ELEMENTS 100000

static redisReplyObjectFunctions fns;
static void *(*create_array)(const redisReadTask *, int);

static void *capped_array(const redisReadTask *task, int elements)
{
    if (elements > MAX_ELEMENTS)
        return NULL;        /* the reader reports "out of memory" and stops */
    return create_array(task, elements);
}

static void take(const redisReply *entry)
{
    struct job_message msg;
    memset(&msg, 0xa5, sizeof(msg));
    if (intake_parse_entry(entry, "jobd:queue", &msg) != 0)
        return;
    FUZZ_CHECK(msg.source == SOURCE_STREAM);
    FUZZ_CHECK(msg.stream && !strcmp(msg.stream, "jobd:queue"));
    FUZZ_CHECK(msg.entry_id && msg.raw);
    FUZZ_CHECK(msg.attempts >= 0 && msg.attempts < 1000);
    FUZZ_CHECK(!msg.has_due || msg.due_ms > 0);
    FUZZ_CHECK(msg.poison_deliveries == 0);
    FUZZ_CHECK(msg.problem || msg.raw_len > 0 || msg.raw[0] == '\0');
    FUZZ_CHECK(!msg.unread_len || (!msg.problem && msg.raw_len == 0));
    FUZZ_CHECK(!msg.unread_fields || msg.unread_len);
    FUZZ_CHECK(msg.unread_len <= INT64_MAX);    /* reads are planned with it, signed */
    /* The strings point into the reply: read them whole. */
    char entry_id[48];
    snprintf(entry_id, sizeof(entry_id), "%s", msg.entry_id);
    if (msg.id)
        envelope_valid_id(msg.id, strlen(msg.id));
    char *raw = malloc(msg.raw_len + 1);
    FUZZ_CHECK(raw);
    memcpy(raw, msg.raw, msg.raw_len);
    raw[msg.raw_len] = '\0';
    if (!msg.problem && !msg.unread_len) {
        int64_t queued_at = msg.queued_at ? msg.queued_at : strtoll(msg.entry_id, NULL, 10);
        fuzz_envelope(fuzz_daemon(1), raw, msg.raw_len, queued_at, msg.attempts);
    }
    free(raw);
}

/* MAX_STRING: the longest string the reply may hold (SIZE_MAX: any);
 * FIELDS_DEPTH (0: none): how deep the fields arrays are that may have no
 * more elements than the cap. R is DEPTH arrays deep. */
static void walk(const redisReply *r, size_t max_string, unsigned fields_depth, unsigned depth)
{
    FUZZ_CHECK(r->type != REDIS_REPLY_STRING || r->len <= max_string);
    if (r->type != REDIS_REPLY_ARRAY)
        return;
    FUZZ_CHECK(!fields_depth || depth != fields_depth ||
               r->elements <= 2 * REDIS_LOOP_MAX_ENTRY_FIELDS);
    take(r);
    for (size_t i = 0; i < r->elements; i++)
        walk(r->element[i], max_string, fields_depth, depth + 1);
}

/* Every reply in the N bytes at P, read as the daemon's reader does. */
static void read_replies(const char *p, size_t n, size_t max_string, unsigned fields_depth)
{
    redisReader *reader = redisReaderCreateWithFunctions(&fns);
    FUZZ_CHECK(reader);
    if (redisReaderFeed(reader, p, n) == REDIS_OK) {
        void *reply = NULL;
        while (redisReaderGetReply(reader, &reply) == REDIS_OK && reply) {
            walk(reply, max_string, fields_depth, 0);
            freeReplyObject(reply);
            reply = NULL;
        }
    }
    redisReaderFree(reader);
}

struct out {
    char *p;
    size_t len;
};

static void collect(void *arg, const char *p, size_t n)
{
    struct out *o = arg;
    FUZZ_CHECK(n > 0);
    memcpy(o->p + o->len, p, n);    /* never more out than in (see below) */
    o->len += n;
}

/* DATA through the filter with limit MAX (fields arrays FIELDS_DEPTH deep
 * counted, unless 0), in pieces of PIECE bytes. The output is never longer
 * than the input: a held header is at most RESP_FILTER_HEAD_MAX bytes,
 * emitted as it was or as ":" and the same digits, and a dropped payload or
 * skipped element emits nothing. OUT has room for SIZE. */
static int filter(const uint8_t *data, size_t size, uint64_t max, unsigned fields_depth,
                  size_t piece, struct out *out)
{
    struct resp_filter f;
    resp_filter_init(&f);
    if (fields_depth)
        resp_filter_cap(&f, fields_depth, 2 * REDIS_LOOP_MAX_ENTRY_FIELDS);
    out->len = 0;
    for (size_t at = 0; at < size; at += piece)
        resp_filter_feed(&f, (const char *)data + at, size - at < piece ? size - at : piece, max,
                         collect, out);
    FUZZ_CHECK(out->len <= size);
    FUZZ_CHECK((f.state == RF_BROKEN) == (f.error != NULL));
    return f.state == RF_BROKEN;
}

static void filtered(const uint8_t *data, size_t size, unsigned fields_depth)
{
    if (!size)
        return;
    uint64_t max = data[size - 1];
    struct out whole = {malloc(size), 0}, pieces = {malloc(size), 0};
    FUZZ_CHECK(whole.p && pieces.p);
    int broken = filter(data, size, max, fields_depth, size, &whole);
    FUZZ_CHECK(filter(data, size, max, fields_depth, (size_t)data[0] % 13 + 1, &pieces) == broken);
    FUZZ_CHECK(whole.len == pieces.len && !memcmp(whole.p, pieces.p, whole.len));
    read_replies(whole.p, whole.len, (size_t)max, fields_depth);
    free(whole.p);
    free(pieces.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!create_array) {
        redisReader *probe = redisReaderCreate();
        FUZZ_CHECK(probe);
        fns = *probe->fn;
        redisReaderFree(probe);
        create_array = fns.createArray;
        fns.createArray = capped_array;
    }
    read_replies((const char *)data, size, SIZE_MAX, 0);
    filtered(data, size, 0);
    filtered(data, size, REDIS_LOOP_CLAIMED_FIELDS_DEPTH);
    filtered(data, size, REDIS_LOOP_FIELDS_DEPTH);
    return 0;
}
