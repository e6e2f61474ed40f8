/* jobctl.c - the command-line client: submit jobs, read results, cancel,
 * look at counters, workers and dead letters, follow events. Synchronous
 * hiredis: a client waits for its answers anyway.
 *
 * Exit codes: 0 ok (every waited job succeeded), 1 a job failed or was not
 * found, 2 usage or configuration error, 3 Redis error.
 */
#include <errno.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cancels.h"
#include "config.h"
#include "envelope.h"
#include "job.h"

#define EXIT_JOB 1
#define EXIT_USAGE 2
#define EXIT_REDIS 3

static struct {
    char host[64];
    int port;
    char ns[80];
    /* Stream and channel names as long as intake.streams / intake.channels
     * items may be (512): cut short, jobctl -c submitted where no daemon reads. */
    char stream[513];
    /* As long as redis.password may be (4096): a longer one was cut short
     * here, and jobctl -c was refused where its daemons logged in. */
    char password[4097];
    bool json;
    redisContext *c;
    /* From a configuration file (-c): where its daemons really listen. */
    char path[108];
    char username[257];
    int db;
    char channel[513];          /* the first intake channel that is not a pattern */
    int64_t cancel_ttl;         /* jobs.cancel_ttl, seconds */
} ctl = {"127.0.0.1", 6379, "jobd", "", "", false, NULL, "", "", 0, "", CANCEL_TTL_DEFAULT};

/* How many bytes at TEXT[I] a terminal would act on: 1 for a C0 control or
 * DEL, 2 for a C1 control in UTF-8 (C2 80..C2 9F: U+009B is a CSI to some
 * terminals), 0 for anything else. */
static size_t control_at(const char *text, size_t len, size_t i)
{
    unsigned char c = (unsigned char)text[i];
    if (c < 0x20 || c == 0x7f)
        return 1;
    if (c == 0xc2 && i + 1 < len && (unsigned char)text[i + 1] >= 0x80 &&
        (unsigned char)text[i + 1] <= 0x9f)
        return 2;
    return 0;
}

static bool has_controls(const char *text, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (control_at(text, len, i))
            return true;
    return false;
}

/* A line of plain text built from what Redis holds (worker snapshots, dead
 * letters, result records): anyone who can write there (a producer) chooses
 * those bytes, and escape sequences printed raw would drive the operator's
 * terminal. Each control character shows as '?' (a C1 one as "??"); the
 * line ends with a newline. */
static void vprint_line(FILE *out, const char *fmt, va_list ap)
{
    char *text = NULL;
    int n = vasprintf(&text, fmt, ap);
    if (n < 0)
        return;
    for (size_t i = 0, k; i < (size_t)n; i++)
        for (k = control_at(text, (size_t)n, i); k; k--)
            text[i + k - 1] = '?';
    fprintf(out, "%s\n", text);
    free(text);
}

static void print_line(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprint_line(stdout, fmt, ap);
    va_end(ap);
}

/* LEN bytes from Redis as a C string for print_line(), each NUL byte shown
 * as '?' like the other control characters: "%s" of the reply itself
 * stopped at the first NUL, and the rest was never shown. NULL only when
 * out of memory. */
static char *visible(const char *text, size_t len)
{
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++)
        out[i] = text[i] ? text[i] : '?';
    out[len] = '\0';
    return out;
}

/* The same on standard error, after "jobctl: ": a warning that names
 * something from Redis (a key name is anyone's too). */
static void warn_line(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("jobctl: ", stderr);
    vprint_line(stderr, fmt, ap);
    va_end(ap);
}

/* How many bytes of valid UTF-8 (as jansson checks it: no overlong forms,
 * no surrogates, nothing past U+10FFFF) start TEXT; 0 when none do. */
static size_t utf8_char_len(const unsigned char *t, size_t len)
{
    if (t[0] < 0x80)
        return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;
    if (t[0] >= 0xc2 && t[0] <= 0xdf)
        n = 2;
    else if (t[0] >= 0xe0 && t[0] <= 0xef) {
        n = 3;
        lo = t[0] == 0xe0 ? 0xa0 : 0x80;
        hi = t[0] == 0xed ? 0x9f : 0xbf;
    } else if (t[0] >= 0xf0 && t[0] <= 0xf4) {
        n = 4;
        lo = t[0] == 0xf0 ? 0x90 : 0x80;
        hi = t[0] == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (len < n || t[1] < lo || t[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (t[i] < 0x80 || t[i] > 0xbf)
            return 0;
    return n;
}

/* TEXT as a JSON string, each byte that is not part of valid UTF-8 given as
 * U+FFFD: text from Redis is anyone's, and json_stringn() refuses the whole
 * of it for one such byte. NULL only when out of memory. */
static json_t *lossy_string(const char *text, size_t len)
{
    char *out = malloc(len * 3 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_char_len((const unsigned char *)text + i, len - i);
        if (n) {
            memcpy(out + o, text + i, n);
            o += n;
            i += n;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    json_t *s = json_stringn(out, o);
    free(out);
    return s;
}

/* A JSON document from Redis: a record, a snapshot, an event, a dead
 * letter's error. jobd writes a NUL byte in a value (a body an http job
 * read) as "\u0000": without JSON_ALLOW_NUL jansson refused the whole
 * document, and a job that succeeded showed "?" and exited 1. Any JSON value
 * is read; one that is not an object has no members, so it shows as "?". */
static json_t *load_doc(const char *text, size_t len)
{
    return json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
}

/* A JSON document from Redis (a record, a snapshot, an event), printed so
 * that --json output always parses. jobd's own print as they are; one with
 * control characters (written by someone else: valid JSON has none raw but
 * C1 ones) is printed again as JSON with every character beyond ASCII
 * escaped, so none reaches the terminal raw; text that is not JSON as a JSON
 * string of itself (bytes that are not UTF-8 as U+FFFD). */
static void print_json(const char *text, size_t len)
{
    json_t *doc = load_doc(text, len);
    if (doc && !has_controls(text, len)) {
        printf("%.*s\n", (int)len, text);
        json_decref(doc);
        return;
    }
    if (!doc)
        doc = lossy_string(text, len);
    char *out = doc ? json_dumps(doc, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ENCODE_ANY) : NULL;
    printf("%s\n", out ? out : "null");
    free(out);
    json_decref(doc);
}

/* The string member NAME of OBJ for print_line(), all of it (json_string_value
 * as "%s" stopped at a NUL byte), or "?" when it is missing or not a string.
 * Freed by the caller. */
static char *shown_member(const json_t *obj, const char *name)
{
    const json_t *v = json_object_get(obj, name);
    return json_is_string(v) ? visible(json_string_value(v), json_string_length(v)) : strdup("?");
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: jobctl [-c jobd.conf | -H host -p port -n namespace] [--json] COMMAND\n"
            "commands:\n"
            "  submit [--publish] [--wait] [JSON | @FILE | -]   one envelope, or NDJSON from a file/stdin\n"
            "  status ID         the result record of ID\n"
            "  cancel ID         ask every daemon to cancel ID\n"
            "  stats             counters per type and status\n"
            "  workers           live daemons and their state\n"
            "  dead list [N]     the last N dead letters (default 20)\n"
            "  dead retry ENTRY  put a dead letter back on the stream\n"
            "  dead purge        delete every dead letter\n"
            "  tail              follow result events\n"
            "exit codes: 0 ok, 1 a job failed or was not found, 2 usage, 3 Redis error\n");
}

/* ARG as a number in LO..HI: decimal digits only, nothing after them, no
 * overflow ("5x", "-1", " 5" and 99999999999999999999 are refused, not
 * read as 5, a default or LONG_MAX). */
static bool parse_number(const char *arg, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (*arg < '0' || *arg > '9' || *end || errno == ERANGE || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* R, the reply to a command; a lost connection or an error reply ends
 * jobctl (exit 3). */
static redisReply *checked(redisReply *r)
{
    if (!r) {
        fprintf(stderr, "jobctl: redis: %s\n", ctl.c->errstr);
        exit(EXIT_REDIS);
    }
    if (r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "jobctl: redis: %s\n", r->str);
        /* Only ctl.c stays reachable at exit: a reply still held here is a
         * leak to LeakSanitizer, which fails the sanitizer test run. */
        freeReplyObject(r);
        exit(EXIT_REDIS);
    }
    return r;
}

static redisReply *cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(ctl.c, fmt, ap);
    va_end(ap);
    return checked(r);
}

/* A command queued, not sent: next_reply() sends what is queued and reads
 * the answers in order, so a batch of commands costs one round trip. */
static void append(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAppendCommand(ctl.c, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) {
        fprintf(stderr, "jobctl: redis: %s\n", ctl.c->err ? ctl.c->errstr : "out of memory");
        exit(EXIT_REDIS);
    }
}

/* The next answer to what append() queued. A lost connection ends jobctl
 * (exit 3); an error reply is returned, the first said and *FAILED set:
 * the commands queued behind it were sent too, and their answers are still
 * to be read and told. */
static redisReply *next_reply(bool *failed)
{
    void *r = NULL;
    if (redisGetReply(ctl.c, &r) != REDIS_OK || !r)
        return checked(NULL);
    redisReply *reply = r;
    if (reply->type == REDIS_REPLY_ERROR && !*failed) {
        fprintf(stderr, "jobctl: redis: %s\n", reply->str);   /* the first: the cause */
        *failed = true;
    }
    return reply;
}

static void connect_redis(void)
{
    ctl.c = ctl.path[0] ? redisConnectUnix(ctl.path) : redisConnect(ctl.host, ctl.port);
    if (!ctl.c || ctl.c->err) {
        char where[400];
        if (ctl.path[0])
            snprintf(where, sizeof(where), "%s", ctl.path);
        else
            snprintf(where, sizeof(where), "%s:%d", ctl.host, ctl.port);
        fprintf(stderr, "jobctl: cannot connect to Redis at %s: %s\n", where,
                ctl.c ? ctl.c->errstr : "out of memory");
        exit(EXIT_REDIS);
    }
    if (ctl.password[0] && ctl.username[0])
        freeReplyObject(cmd("AUTH %s %s", ctl.username, ctl.password));
    else if (ctl.password[0])
        freeReplyObject(cmd("AUTH %s", ctl.password));
    if (ctl.db)
        freeReplyObject(cmd("SELECT %d", ctl.db));
    if (!ctl.stream[0])
        snprintf(ctl.stream, sizeof(ctl.stream), "%s:queue", ctl.ns);
}

/* ---- submit ---------------------------------------------------------------- */

static void progress(size_t done, size_t total, int64_t started)
{
    double secs = (double)(mono_ms() - started) / 1000.0;
    double rate = secs > 0 ? (double)done / secs : 0;
    int width = 30, filled = total ? (int)((double)width * (double)done / (double)total) : 0;
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    double eta = rate > 0 ? (double)(total - done) / rate : 0;
    fprintf(stderr, "\r[%s] %zu/%zu %.0f jobs/s ETA %.0fs ", bar, done, total, rate, eta);
    if (done == total)
        fputc('\n', stderr);
}

/* PROTOCOL §2: 1-128 of [A-Za-z0-9._:-]. */
static bool valid_id(const char *id)
{
    size_t n = strlen(id);
    return n >= 1 && n <= 128 &&
           strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-") == n;
}

/* How far a daemon's clock may be behind Redis's for --wait still to know
 * the record of a job it submitted (see is_this_run()). */
#define CLOCK_SKEW_MS 1000

/* A job submit --wait waits for. An earlier run under the same id may have
 * left its record there (for up to its result_ttl): that one is not this
 * submission's outcome. */
struct waited {
    char *id;
    long long since_ms;         /* the submission, by Redis's clock */
    char *before;               /* the record under the id then; NULL: none */
    size_t before_len;
};

/* Redis's clock in ms, from R, TIME's reply: jobctl's own may be anything
 * relative to the daemons'. Frees R. */
static long long redis_ms(redisReply *r)
{
    long long ms = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2)
        ms = atoll(r->element[0]->str) * 1000 + atoll(r->element[1]->str) / 1000;
    freeReplyObject(r);
    return ms;
}

/* Whether the record TEXT under W's id is of this submission: not the one
 * that was there before it, and queued no earlier than it. queued_at, not
 * finished_at: an earlier run of the id still going when this one was
 * submitted finishes after it but was queued before, and a retried job keeps
 * its first queued_at. jobd takes queued_at from the entry id (Redis's clock,
 * like since_ms) for a stream job, but from its own clock for a published
 * one, and when the entry id is ahead of that clock: CLOCK_SKEW_MS allows
 * for a daemon's clock behind Redis's. A record without queued_at (not
 * jobd's) that is new counts as this run's: better printed than waited past. */
static bool is_this_run(const struct waited *w, const char *text, size_t len)
{
    if (w->before && w->before_len == len && !memcmp(w->before, text, len))
        return false;
    json_t *rec = load_doc(text, len);
    json_t *queued = json_object_get(rec, "queued_at");
    bool ours = !json_is_integer(queued) ||
                json_integer_value(queued) >= w->since_ms - CLOCK_SKEW_MS;
    json_decref(rec);
    return ours;
}

/* R, the reply of a GET of the record under W's id just before its
 * envelope went, noted (see struct waited). Frees R. */
static void note_record_before(struct waited *w, redisReply *r)
{
    if (r->type == REDIS_REPLY_STRING && (w->before = malloc(r->len ? r->len : 1))) {
        memcpy(w->before, r->str, r->len);
        w->before_len = r->len;
    }
    freeReplyObject(r);
}

/* Envelopes sent in one pipelined batch, and at most about this many bytes
 * of them (an envelope may be as long as limits.max_job_bytes allows):
 * a round trip a batch instead of one or two an envelope, and hiredis's
 * buffer stays small. */
#define SUBMIT_BATCH 256
#define SUBMIT_BATCH_BYTES (1024 * 1024)

/* An envelope of the batch on its way. */
struct sending {
    json_t *parsed;
    const char *id;             /* its valid id, or own; NULL: none */
    char own[64];               /* the id jobctl gave a stream entry to wait for */
};

/* R, the answer to a GET of W's record: when it is this run's, printed,
 * counted in *DONE, and W is done (RC: 1 if it did not succeed). */
static void poll_reply(struct waited *w, const redisReply *r, bool bar, int *rc, size_t *done,
                       size_t nwaits, int64_t started)
{
    if (r->type != REDIS_REPLY_STRING || !is_this_run(w, r->str, r->len))
        return;
    json_t *rec = load_doc(r->str, r->len);
    const char *status = json_string_value(json_object_get(rec, "status"));
    if (!status || strcmp(status, "succeeded"))
        *rc = EXIT_JOB;
    if (!bar)
        print_json(r->str, r->len);
    json_decref(rec);
    free(w->id);
    w->id = NULL;
    (*done)++;
    if (bar)
        progress(*done, nwaits, started);
}

/* Room for twice as many line numbers in *LINES (*N of them); -1 when out
 * of memory (*LINES is kept). */
static int grow_lines(size_t **lines, size_t *n)
{
    size_t want = *n ? *n * 2 : 256;
    size_t *more = realloc(*lines, want * sizeof(**lines));
    if (!more)
        return -1;
    *lines = more;
    *n = want;
    return 0;
}

/* Envelope K as messages name it: by its number, and by its line when blank
 * lines before it in the file (LINES; NULL: none read) make the two differ. */
static const char *envelope_name(char *buf, size_t len, size_t k, const size_t *lines)
{
    if (lines && lines[k] != k + 1)
        snprintf(buf, len, "envelope %zu (line %zu)", k + 1, lines[k]);
    else
        snprintf(buf, len, "envelope %zu", k + 1);
    return buf;
}

/* Every line: an envelope. Returns the ids to wait for (stream entry ids for
 * envelopes without one). */
static int submit(int argc, char **argv)
{
    bool publish = false, wait = false;
    const char *source = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--publish"))
            publish = true;
        else if (!strcmp(argv[i], "--wait"))
            wait = true;
        else if (!source)
            source = argv[i];
        else {
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    json_t *envelopes = json_array();
    size_t *lines = NULL, nlines = 0;   /* each envelope's line in a file, for messages */
    if (source && source[0] != '@' && strcmp(source, "-")) {
        if (json_array_append_new(envelopes, json_string(source))) {
            fprintf(stderr, "jobctl: the envelope is not UTF-8 text; nothing submitted\n");
            json_decref(envelopes);
            return EXIT_USAGE;
        }
    } else {
        FILE *in = stdin;
        if (source && source[0] == '@' && !(in = fopen(source + 1, "r"))) {
            fprintf(stderr, "jobctl: %s: %s\n", source + 1, strerror(errno));
            json_decref(envelopes);
            return EXIT_USAGE;
        }
        char *line = NULL;
        size_t cap = 0, lineno = 0;
        ssize_t n;
        while ((n = getline(&line, &cap, in)) > 0) {
            lineno++;
            while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                line[--n] = '\0';
            if (!n)
                continue;       /* a blank line: no envelope, but a line all the same */
            size_t k = json_array_size(envelopes);
            bool no_room = k == nlines && grow_lines(&lines, &nlines);
            if (no_room || json_array_append_new(envelopes, json_stringn(line, (size_t)n))) {
                if (no_room)
                    fprintf(stderr, "jobctl: out of memory\n");
                else
                    fprintf(stderr, "jobctl: line %zu is not UTF-8 text; nothing submitted\n",
                            lineno);
                free(line);
                free(lines);
                if (in != stdin)
                    fclose(in);
                json_decref(envelopes);
                return EXIT_USAGE;
            }
            lines[k] = lineno;
        }
        free(line);
        if (in != stdin)
            fclose(in);
    }
    size_t total = json_array_size(envelopes), i;
    bool bar = isatty(STDERR_FILENO) && total > 1;
    json_t *text;
    /* Every envelope, at most, is waited for. */
    struct waited *waits = wait ? calloc(total ? total : 1, sizeof(*waits)) : NULL;
    size_t nwaits = 0;
    if (wait && !waits) {
        fprintf(stderr, "jobctl: out of memory\n");
        free(lines);
        json_decref(envelopes);
        return EXIT_USAGE;
    }
    char channel[sizeof(ctl.channel)];
    if (ctl.channel[0])
        snprintf(channel, sizeof(channel), "%s", ctl.channel);
    else
        snprintf(channel, sizeof(channel), "%s:jobs", ctl.ns);
    struct sending *batch = calloc(SUBMIT_BATCH, sizeof(*batch));
    if (!batch) {
        fprintf(stderr, "jobctl: out of memory\n");
        free(waits);
        free(lines);
        json_decref(envelopes);
        return EXIT_USAGE;
    }
    int64_t started = mono_ms();
    bool failed = false;
    for (i = 0; i < total && !failed;) {
        /* A batch's commands are queued in the order they were sent one by
         * one, a round trip each: an envelope's GET (and TIME) still runs
         * right before it in Redis, after the envelopes ahead of it, so one
         * earlier in the same file under the same id is "before" if its
         * record is there by then, as it was. */
        size_t first = i, bytes = 0;
        for (; i < total && i - first < SUBMIT_BATCH && bytes < SUBMIT_BATCH_BYTES; i++) {
            struct sending *b = &batch[i - first];
            /* A line from a file or stdin may hold a NUL byte: all of it
             * goes, by its length (as "%s" it was cut there, and what came
             * before it could run as the whole job). jobd rejects what is
             * not JSON. */
            text = json_array_get(envelopes, i);
            const char *env = json_string_value(text);
            size_t env_len = json_string_length(text);
            b->parsed = json_loadb(env, env_len, 0, NULL);
            b->id = json_string_value(json_object_get(b->parsed, "id"));
            if (b->id && !valid_id(b->id))
                b->id = NULL;   /* rejected with no result under it: never wait for it */
            b->own[0] = '\0';
            if (wait && !b->id && !publish) {
                /* jobd stores a result under an "id" field of the entry when
                 * the envelope has no valid id, also when it rejects the
                 * envelope (a rejection without an id has no result, and
                 * --wait would never end). */
                snprintf(b->own, sizeof(b->own), "jobctl-%ld-%lld-%zu", (long)getpid(),
                         (long long)mono_ms(), i);
                b->id = b->own;
            }
            if (wait && b->id)
                append("GET %s:result:%s", ctl.ns, b->id);
            /* A published job is queued when a daemon receives it: after now. */
            if (wait && publish)
                append("TIME");
            if (publish)
                append("PUBLISH %s %b", channel, env, env_len);
            else if (b->own[0])
                append("XADD %s * job %b id %s", ctl.stream, env, env_len, b->own);
            else
                append("XADD %s * job %b", ctl.stream, env, env_len);
            bytes += env_len;
        }
        for (size_t k = first; k < i; k++) {
            struct sending *b = &batch[k - first];
            struct waited *w = wait ? &waits[k] : NULL;
            /* Each failure is told with its envelope's number here: in a
             * batch the commands after a failed one were sent too. */
            bool told = true;
            char name[64];
            redisReply *before = w && b->id ? next_reply(&told) : NULL;
            redisReply *clock = w && publish ? next_reply(&told) : NULL;
            redisReply *r = next_reply(&told);
            const redisReply *unwaitable = before && before->type == REDIS_REPLY_ERROR ? before
                                           : clock && clock->type == REDIS_REPLY_ERROR ? clock
                                                                                       : NULL;
            const char *wait_id =
                b->id ? b->id : (!publish && r->type == REDIS_REPLY_STRING ? r->str : NULL);
            if (r->type == REDIS_REPLY_ERROR) {
                fprintf(stderr, "jobctl: %s not submitted: redis: %s\n",
                        envelope_name(name, sizeof(name), k, lines), r->str);
                failed = true;
                wait_id = NULL;
            } else if (unwaitable) {
                /* It went in: said on stdout below, not waited for. */
                fprintf(stderr, "jobctl: %s submitted, not waited for: redis: %s\n",
                        envelope_name(name, sizeof(name), k, lines), unwaitable->str);
                failed = true;
            } else if (wait && !wait_id) {
                fprintf(stderr, "jobctl: a published envelope without a valid \"id\" cannot be "
                                "waited for\n");
            }
            if (w && wait_id && before && (!publish || clock) && !unwaitable &&
                (w->id = strdup(wait_id))) {
                note_record_before(w, before);
                before = NULL;
                /* A stream job is queued at its entry id's ms, Redis's clock;
                 * a published one when a daemon receives it: after TIME. */
                w->since_ms = publish ? redis_ms(clock) : strtoll(r->str, NULL, 10);
                clock = NULL;
                nwaits++;
            } else if (r->type != REDIS_REPLY_ERROR && (!wait || unwaitable) && !bar) {
                printf("%s\n", wait_id ? wait_id : "(published, no id)");
            }
            freeReplyObject(before);
            freeReplyObject(clock);
            freeReplyObject(r);
            json_decref(b->parsed);
            if (bar && !wait && (k % 100 == 99 || k + 1 == total))
                progress(k + 1, total, started);
        }
    }
    /* A failure ends the run without waiting: the envelopes that did go in
     * are said (ids on stdout, as without --wait), so a rerun of the file
     * can leave them out. */
    for (size_t k = 0; failed && wait && k < total; k++)
        if (waits[k].id && !bar)
            printf("%s\n", waits[k].id);
    free(batch);
    int rc = failed ? EXIT_REDIS : 0;
    size_t done = 0;
    started = mono_ms();
    while (!failed && done < nwaits) {
        /* Every record still awaited, SUBMIT_BATCH GETs a round trip (one
         * each was a pass of N round trips). */
        for (size_t k = 0, from = 0; k < total && !failed; from = k) {
            for (size_t asked = 0; k < total && asked < SUBMIT_BATCH; k++) {
                if (waits[k].id) {
                    append("GET %s:result:%s", ctl.ns, waits[k].id);
                    asked++;
                }
            }
            for (size_t j = from; j < k; j++) {
                struct waited *w = &waits[j];
                if (!w->id)
                    continue;       /* its record came */
                redisReply *r = next_reply(&failed);
                poll_reply(w, r, bar, &rc, &done, nwaits, started);
                freeReplyObject(r);
            }
        }
        if (!failed && done < nwaits)
            usleep(20000);
    }
    if (failed)
        rc = EXIT_REDIS;
    for (size_t k = 0; wait && k < total; k++) {
        free(waits[k].id);
        free(waits[k].before);
    }
    free(waits);
    free(lines);
    json_decref(envelopes);
    return rc;
}

/* ---- the other commands ------------------------------------------------------ */

static int status(const char *id)
{
    redisReply *r = cmd("GET %s:result:%s", ctl.ns, id);
    int rc = EXIT_JOB;
    if (r->type == REDIS_REPLY_STRING) {
        json_t *rec = load_doc(r->str, r->len);
        const char *st = json_string_value(json_object_get(rec, "status"));
        json_t *error = json_object_get(rec, "error");
        if (ctl.json) {
            print_json(r->str, r->len);
        } else {
            char *shown_st = shown_member(rec, "status");
            char *code = error ? shown_member(error, "code") : NULL;
            print_line("%s %s attempts=%lld%s%s", id, shown_st ? shown_st : "?",
                       (long long)json_integer_value(json_object_get(rec, "attempts")),
                       error ? " error=" : "", error ? (code ? code : "?") : "");
            free(shown_st);
            free(code);
        }
        rc = st && !strcmp(st, "succeeded") ? 0 : EXIT_JOB;
        json_decref(rec);
    } else {
        fprintf(stderr, "jobctl: no result for %s (not finished, unknown, or expired)\n", id);
    }
    freeReplyObject(r);
    return rc;
}

static int cancel(const char *id)
{
    json_t *msg = json_pack("{s:s, s:s}", "cmd", "cancel", "id", id);
    char *text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    if (!text) {
        /* json_pack() refuses an id that is not UTF-8: NULL, not a message. */
        fprintf(stderr, "jobctl: the id is not UTF-8 text; nothing sent\n");
        json_decref(msg);
        return EXIT_USAGE;
    }
    /* Kept first, then published: a daemon that starts, or reconnects, in
     * between reads it from NS:cancels (cancels.h), and a job that waits
     * while no daemon runs at all is cancelled too. */
    bool kept = envelope_valid_id(id, strlen(id));
    if (kept) {
        long long until = (long long)(now_ms() + ctl.cancel_ttl * 1000);
        /* GT: a cancel kept longer already (a daemon's longer cancel_ttl) stays so. */
        redisReply *z = redisCommand(ctl.c, "ZADD %s:cancels GT %lld %s", ctl.ns, until, id);
        if (!z) {
            fprintf(stderr, "jobctl: redis: %s\n", ctl.c->errstr);
            free(text);
            json_decref(msg);
            return EXIT_REDIS;
        }
        /* Refused (a key of another type, an ACL): still published, so the
         * daemons running now cancel it; said, since later ones will not. */
        if (z->type == REDIS_REPLY_ERROR) {
            fprintf(stderr, "jobctl: warning: keeping the cancel in %s:cancels failed: %s; "
                    "daemons started later will not know it\n", ctl.ns, z->str);
            kept = false;
        }
        freeReplyObject(z);
    } else {
        fprintf(stderr, "jobctl: warning: that id cannot name a job (1-128 of "
                "[A-Za-z0-9._:-]); daemons will ignore this cancel\n");
    }
    redisReply *r = cmd("PUBLISH %s:control %s", ctl.ns, text);
    if (ctl.json) {
        json_t *out = json_pack("{s:s, s:I}", "id", id, "daemons", (json_int_t)r->integer);
        char *o = json_dumps(out, JSON_COMPACT);
        printf("%s\n", o);
        free(o);
        json_decref(out);
    } else {
        char kept_for[80] = "";
        if (kept)
            snprintf(kept_for, sizeof(kept_for), ", and kept for %lld s for daemons not running now",
                     (long long)ctl.cancel_ttl);
        print_line("cancel %s sent to %lld daemon(s)%s", id, r->integer, kept_for);
    }
    freeReplyObject(r);
    free(text);
    json_decref(msg);
    return 0;
}

static int stats(void)
{
    redisReply *r = cmd("HGETALL %s:stats", ctl.ns);
    json_t *out = json_object();
    /* Field names are anyone's who can write the hash: bytes that are not
     * UTF-8 become U+FFFD (jansson refuses such a key), and control
     * characters are escaped in JSON and shown as '?' in text. By length:
     * names that differ after a NUL byte are two counters, not one. */
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        json_t *name = lossy_string(r->element[i]->str, r->element[i]->len);
        if (name)
            json_object_setn_new(out, json_string_value(name), json_string_length(name),
                                 json_integer(atoll(r->element[i + 1]->str)));
        json_decref(name);
    }
    if (ctl.json) {
        char *s = json_dumps(out, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
        printf("%s\n", s);
        free(s);
    } else {
        const char *k;
        size_t klen;
        json_t *v;
        json_object_keylen_foreach(out, k, klen, v) {
            char *shown = visible(k, klen);
            print_line("%-28s %lld", shown ? shown : "?", (long long)json_integer_value(v));
            free(shown);
        }
    }
    json_decref(out);
    freeReplyObject(r);
    return 0;
}

static int workers(void)
{
    char pattern[128];
    snprintf(pattern, sizeof(pattern), "%s:worker:*", ctl.ns);
    unsigned long long cursor = 0;
    do {
        redisReply *r = cmd("SCAN %llu MATCH %s COUNT 100", cursor, pattern);
        cursor = strtoull(r->element[0]->str, NULL, 10);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            const redisReply *key = r->element[1]->element[i];
            /* Not cmd(): one key that is not a snapshot (a hash someone
             * wrote: WRONGTYPE) is skipped, said, and the rest listed. By
             * its length: a key with a NUL byte is that key, not another. */
            redisReply *w = redisCommand(ctl.c, "GET %b", key->str, key->len);
            if (!w) {
                fprintf(stderr, "jobctl: redis: %s\n", ctl.c->errstr);
                freeReplyObject(r);
                return EXIT_REDIS;
            }
            if (w->type == REDIS_REPLY_ERROR) {
                char *shown = visible(key->str, key->len);
                warn_line("skipped %s: %s", shown ? shown : "a key", w->str);
                free(shown);
            } else if (w->type == REDIS_REPLY_STRING) {
                if (ctl.json) {
                    print_json(w->str, w->len);
                } else {
                    /* Anyone with write access to Redis can put anything
                     * here: missing fields print as "?" or 0. */
                    json_t *s = load_doc(w->str, w->len);
                    json_t *jobs = json_object_get(s, "jobs");
                    char *worker = shown_member(s, "worker");
                    char *version = shown_member(s, "version");
                    /* Daemons sharing a name overwrite one key: one line
                     * shows for several daemons, so it says so itself. */
                    json_int_t shared = json_integer_value(json_object_get(s, "name_collisions"));
                    char note[96] = "";
                    if (shared > 0)
                        snprintf(note, sizeof(note), " name_collisions=%lld (another daemon uses "
                                 "this name: set worker.name)", (long long)shared);
#define JOBS_FIELD(name) (long long)json_integer_value(json_object_get(jobs, name))
                    print_line("%s inflight=%lld queued=%lld running=%lld storing=%lld "
                               "group_children=%lld/%lld held_bytes=%lld draining=%s version=%s%s",
                               worker ? worker : "?", JOBS_FIELD("inflight"),
                               JOBS_FIELD("queued"), JOBS_FIELD("running"), JOBS_FIELD("storing"),
                               JOBS_FIELD("group_children_running"),
                               JOBS_FIELD("group_children_queued"), JOBS_FIELD("held_bytes"),
                               json_is_true(json_object_get(s, "draining")) ? "yes" : "no",
                               version ? version : "?", note);
#undef JOBS_FIELD
                    free(worker);
                    free(version);
                    json_decref(s);
                }
            }
            freeReplyObject(w);
        }
        freeReplyObject(r);
    } while (cursor);
    return 0;
}

/* NAME's value among a stream entry's FIELDS; NULL when absent. Names are
 * compared whole: strcmp() took a field "job\0x" for "job". */
static const redisReply *field_reply(const redisReply *fields, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (fields->element[i]->len == n && !memcmp(fields->element[i]->str, name, n))
            return fields->element[i + 1];
    return NULL;
}

/* NAME's value as bytes, its length in *LEN: "" when absent. */
static const char *field(const redisReply *fields, const char *name, size_t *len)
{
    const redisReply *v = field_reply(fields, name);
    *len = v ? v->len : 0;
    return v ? v->str : "";
}

/* Queues dead letter ENTRY's job again and deletes the letter, in one step:
 * no crash or lost connection in between leaves it both queued and dead,
 * or neither. A script, not MULTI/EXEC: an XADD refused at run time (the
 * stream key of another type) would not stop the XDEL queued after it,
 * and the letter would be gone. The letter's "id" field (the id jobd gave
 * an envelope without one) goes along, so the result comes under that id
 * again. Prints the new entry id; returns an exit code. */
static int requeue_dead(const char *entry, const redisReply *job, const redisReply *id)
{
    static const char script[] =
        "local e = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))\n"
        "redis.call('XDEL', KEYS[2], ARGV[1])\n"
        "return e\n";
    char dead_key[sizeof(ctl.ns) + 8];
    snprintf(dead_key, sizeof(dead_key), "%s:dead", ctl.ns);
    const char *argv[10] = {"EVAL", script, "2", ctl.stream, dead_key, entry, "job", job->str};
    size_t lens[10] = {4, strlen(script), 1, strlen(ctl.stream), strlen(dead_key),
                       strlen(entry), 3, job->len};
    int argc = 8;
    if (id && id->len) {
        argv[argc] = "id", lens[argc++] = 2;
        argv[argc] = id->str, lens[argc++] = id->len;
    }
    redisReply *x = redisCommandArgv(ctl.c, argc, argv, lens);
    if (!x || x->type != REDIS_REPLY_STRING) {
        fprintf(stderr, "jobctl: redis: %s; dead letter %s kept\n",
                !x ? ctl.c->errstr : x->type == REDIS_REPLY_ERROR ? x->str : "unexpected reply",
                entry);
        freeReplyObject(x);
        return EXIT_REDIS;
    }
    printf("%s\n", x->str);
    freeReplyObject(x);
    return 0;
}

/* One dead letter as a JSON line. Its fields are anyone's who can write the
 * stream: the id is escaped as a string, and an error that is not JSON is
 * given as a string too, so the line always parses. */
static void print_dead_json(const char *entry, const redisReply *fields)
{
    size_t error_len, id_len;
    const char *error = field(fields, "error", &error_len), *id = field(fields, "id", &id_len);
    json_t *err = error_len ? load_doc(error, error_len) : json_null();
    if (!err)
        err = lossy_string(error, error_len);
    json_t *line = json_pack("{s:s, s:o?, s:o?}", "entry", entry, "id",
                             lossy_string(id, id_len), "error", err);
    char *text = line ? json_dumps(line, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    if (text)
        printf("%s\n", text);
    else    /* out of memory: said, not dropped */
        printf("{\"entry\":\"%s\",\"id\":null,\"error\":null}\n", entry);
    free(text);
    json_decref(line);
}

/* dead's arguments, checked before Redis is asked anything (see main()):
 * 0, or EXIT_USAGE said. *N: dead list's count. */
static int dead_args(int argc, char **argv, long *n)
{
    *n = 20;
    if (argc == 1 && (!strcmp(argv[0], "list") || !strcmp(argv[0], "purge")))
        return 0;
    if (argc == 2 && !strcmp(argv[0], "retry"))
        return 0;
    if (argc == 2 && !strcmp(argv[0], "list")) {
        if (parse_number(argv[1], 1, LONG_MAX, n))
            return 0;
        fprintf(stderr, "jobctl: dead list: N is a whole number from 1, got \"%s\"\n", argv[1]);
        return EXIT_USAGE;
    }
    usage(stderr);
    return EXIT_USAGE;
}

static int dead_check(int argc, char **argv)
{
    long n;
    return dead_args(argc, argv, &n);
}

static int dead(int argc, char **argv)
{
    long n;
    if (dead_args(argc, argv, &n))
        return EXIT_USAGE;
    if (!strcmp(argv[0], "list")) {
        redisReply *r = cmd("XREVRANGE %s:dead + - COUNT %ld", ctl.ns, n);
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *e = r->element[i], *f = e->element[1];
            if (ctl.json) {
                print_dead_json(e->element[0]->str, f);
                continue;
            }
            size_t id_len, error_len;
            const char *id = field(f, "id", &id_len), *error = field(f, "error", &error_len);
            char *shown_id = visible(id, id_len), *shown_error = visible(error, error_len);
            print_line("%s %s %s", e->element[0]->str, shown_id ? shown_id : "?",
                       shown_error ? shown_error : "?");
            free(shown_id);
            free(shown_error);
        }
        freeReplyObject(r);
        return 0;
    }
    if (!strcmp(argv[0], "retry")) {
        redisReply *r = cmd("XRANGE %s:dead %s %s", ctl.ns, argv[1], argv[1]);
        if (r->elements != 1) {
            fprintf(stderr, "jobctl: no dead letter %s\n", argv[1]);
            freeReplyObject(r);
            return EXIT_JOB;
        }
        const redisReply *f = r->element[0]->element[1];
        size_t len;
        const char *truncated = field(f, "truncated", &len);
        if (len == 1 && *truncated == '1') {
            /* Kept only up to limits.max_job_bytes: sent again it would be
             * rejected as broken JSON, not run. */
            fprintf(stderr, "jobctl: dead letter %s holds only the first bytes of its envelope "
                            "(it was over limits.max_job_bytes); not retried\n", argv[1]);
            freeReplyObject(r);
            return EXIT_JOB;
        }
        const redisReply *job = field_reply(f, "job");
        if (!job || !job->len) {
            /* Sent again it could only be rejected, and the letter, all
             * there is of it, would be gone. */
            fprintf(stderr, "jobctl: dead letter %s has no job to retry (its \"job\" field is "
                            "missing or empty); not retried\n", argv[1]);
            freeReplyObject(r);
            return EXIT_JOB;
        }
        int rc = requeue_dead(argv[1], job, field_reply(f, "id"));
        freeReplyObject(r);
        return rc;
    }
    redisReply *r = cmd("DEL %s:dead", ctl.ns);     /* purge */
    printf("purged\n");
    freeReplyObject(r);
    return 0;
}

static int tail(void)
{
    redisReply *r = cmd("SUBSCRIBE %s:events", ctl.ns);
    freeReplyObject(r);
    setvbuf(stdout, NULL, _IOLBF, 0);
    void *reply;
    while (redisGetReply(ctl.c, &reply) == REDIS_OK) {
        redisReply *m = reply;
        if (m->type == REDIS_REPLY_ARRAY && m->elements == 3 && m->element[2]->str)
            print_json(m->element[2]->str, m->element[2]->len);
        freeReplyObject(m);
    }
    fprintf(stderr, "jobctl: redis: %s\n", ctl.c->errstr);
    return EXIT_REDIS;
}

/* The commands as main() runs them: (argument count, arguments). */
static int status_cmd(int argc, char **argv) { (void)argc; return status(argv[0]); }
static int cancel_cmd(int argc, char **argv) { (void)argc; return cancel(argv[0]); }
static int stats_cmd(int argc, char **argv) { (void)argc, (void)argv; return stats(); }
static int workers_cmd(int argc, char **argv) { (void)argc, (void)argv; return workers(); }
static int tail_cmd(int argc, char **argv) { (void)argc, (void)argv; return tail(); }

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},   {"namespace", required_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "+c:H:p:n:jh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': {
            struct config cfg;
            char err[4096];
            if (config_load(optarg, &cfg, err, sizeof(err))) {
                fprintf(stderr, "%s", err);
                return EXIT_USAGE;
            }
            snprintf(ctl.host, sizeof(ctl.host), "%s", cfg.redis_host);
            ctl.port = cfg.redis_port;
            snprintf(ctl.ns, sizeof(ctl.ns), "%s", cfg.ns);
            snprintf(ctl.stream, sizeof(ctl.stream), "%s", cfg.streams[0]);
            snprintf(ctl.password, sizeof(ctl.password), "%s", cfg.redis_password);
            snprintf(ctl.username, sizeof(ctl.username), "%s", cfg.redis_username);
            snprintf(ctl.path, sizeof(ctl.path), "%s", cfg.redis_path);
            ctl.db = cfg.redis_db;
            ctl.cancel_ttl = cfg.cancel_ttl;
            for (int i = 0; i < cfg.nchannels && !ctl.channel[0]; i++)
                if (!config_is_pattern(cfg.channels[i]))
                    snprintf(ctl.channel, sizeof(ctl.channel), "%s", cfg.channels[i]);
            config_free(&cfg);
            break;
        }
        case 'H':
            /* An address on the command line wins over a socket path from -c. */
            snprintf(ctl.host, sizeof(ctl.host), "%s", optarg);
            ctl.path[0] = '\0';
            break;
        case 'p': {
            long port;
            if (!parse_number(optarg, 1, 65535, &port)) {
                fprintf(stderr, "jobctl: -p: a port is 1..65535, got \"%s\"\n", optarg);
                return EXIT_USAGE;
            }
            ctl.port = (int)port;
            ctl.path[0] = '\0';
            break;
        }
        case 'n': {
            /* As redis.namespace is checked: a longer one was cut short
             * here (keys no daemon uses), and a glob character made the
             * SCAN of workers match other namespaces' keys. */
            char why[128];
            size_t n = strlen(optarg);
            if (n < 1 || n > CONFIG_NS_MAX) {
                fprintf(stderr, "jobctl: -n: a namespace is 1..%d bytes, got %zu\n",
                        CONFIG_NS_MAX, n);
                return EXIT_USAGE;
            }
            if (config_check_key_chars(optarg, why, sizeof(why))) {
                fprintf(stderr, "jobctl: -n: %s\n", why);
                return EXIT_USAGE;
            }
            snprintf(ctl.ns, sizeof(ctl.ns), "%s", optarg);
            break;
        }
        case 'j': ctl.json = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *command = argv[optind];
    int nargs = argc - optind - 1;
    char **args = argv + optind + 1;
    static const struct {
        const char *name;
        int nargs;              /* -1: the command checks its own */
        int (*run)(int argc, char **argv);
        int (*check)(int argc, char **argv);    /* before connecting; NULL: none */
    } commands[] = {{"submit", -1, submit, NULL},   {"status", 1, status_cmd, NULL},
                    {"cancel", 1, cancel_cmd, NULL}, {"stats", -1, stats_cmd, NULL},
                    {"workers", -1, workers_cmd, NULL}, {"dead", -1, dead, dead_check},
                    {"tail", -1, tail_cmd, NULL}};
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(command, commands[i].name) || (commands[i].nargs >= 0 && commands[i].nargs != nargs))
            continue;
        /* Only a command that will run needs Redis: a usage error is one
         * whether or not Redis answers. */
        if (commands[i].check) {
            int rc = commands[i].check(nargs, args);
            if (rc)
                return rc;
        }
        connect_redis();
        int rc = commands[i].run(nargs, args);
        redisFree(ctl.c);
        return rc;
    }
    usage(stderr);
    return EXIT_USAGE;
}
