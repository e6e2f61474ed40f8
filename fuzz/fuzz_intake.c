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
 */
#include <hiredis/hiredis.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "intake.h"
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
    /* The strings point into the reply: read them whole. */
    char entry_id[48];
    snprintf(entry_id, sizeof(entry_id), "%s", msg.entry_id);
    if (msg.id)
        envelope_valid_id(msg.id, strlen(msg.id));
    char *raw = malloc(msg.raw_len + 1);
    FUZZ_CHECK(raw);
    memcpy(raw, msg.raw, msg.raw_len);
    raw[msg.raw_len] = '\0';
    if (!msg.problem) {
        int64_t queued_at = msg.queued_at ? msg.queued_at : strtoll(msg.entry_id, NULL, 10);
        fuzz_envelope(fuzz_daemon(1), raw, msg.raw_len, queued_at, msg.attempts);
    }
    free(raw);
}

static void walk(const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return;
    take(r);
    for (size_t i = 0; i < r->elements; i++)
        walk(r->element[i]);
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
    redisReader *reader = redisReaderCreateWithFunctions(&fns);
    FUZZ_CHECK(reader);
    if (redisReaderFeed(reader, (const char *)data, size) == REDIS_OK) {
        void *reply = NULL;
        while (redisReaderGetReply(reader, &reply) == REDIS_OK && reply) {
            walk(reply);
            freeReplyObject(reply);
            reply = NULL;
        }
    }
    redisReaderFree(reader);
    return 0;
}
