/* jsonw.h - writing JSON text into a growable buffer.
 *
 * Every outcome becomes a JSON record, and jansson's json_dumps() was the
 * largest single cost of writing one (16% of jobd's CPU in bench/sql): it
 * formats each object's address with snprintf("%p") into a hash table to
 * detect cycles, and goes through a callback per token. This writer appends
 * straight into one buffer and produces the same text as
 * json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) (tests/test_jsonw.c checks).
 */
#ifndef JOBD_JSONW_H
#define JOBD_JSONW_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct jbuf {
    char *p;
    size_t len, cap;
    bool failed;                /* out of memory, or a value jansson cannot dump */
    bool measure;               /* set by the caller: only count len, write nothing */
};

/* Bytes as they are. */
void jbuf_raw(struct jbuf *b, const char *s, size_t n);
#define jbuf_lit(b, s) jbuf_raw((b), (s), sizeof(s) - 1)
/* A quoted, escaped JSON string of N bytes (UTF-8 expected, not checked). */
void jbuf_string(struct jbuf *b, const char *s, size_t n);
/* How many bytes jbuf_string() writes for those N bytes, quotes included. */
size_t jsonw_string_len(const char *s, size_t n);
void jbuf_int(struct jbuf *b, int64_t v);
/* Any jansson value, compact, keys in the object's own order. */
void jbuf_value(struct jbuf *b, const json_t *v);

/* How deep a value from outside (an http "json" response, a json or jsonb
 * column) may nest. jansson reads no document nested deeper than
 * JSON_PARSER_MAX_DEPTH (2048), and a record nests such a value further:
 * 2 levels in its own ({"result": {"json": ...}}, {"result": {"rows": [...]}}
 * 3), 2 more in a batch's "results", 3 in each group around it (3 at most).
 * Deeper, the record was stored but jansson could not read it back: jobctl
 * showed "?" for a job that succeeded, and a group put an "internal" error in
 * place of the child's record. 16 levels cover all of that. */
#define JSONW_VALUE_MAX_NESTING (JSON_PARSER_MAX_DEPTH - 16)
/* Whether V, parsed from TEXT_LEN bytes, nests deeper than that. Text
 * shorter than the limit cannot (each level takes a '[' or '{'): it is not
 * walked, and a walk stops at the limit. */
bool jsonw_too_deep(const json_t *v, size_t text_len);

/* The text, NUL-terminated, now the caller's to free(); NULL if anything
 * failed (the buffer is freed then). Leaves B empty for reuse. Not for a
 * buffer that measures: its len is the size the text would have. */
char *jbuf_take(struct jbuf *b, size_t *len);

/* json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) through this writer. */
char *jsonw_dumps(const json_t *v, size_t *len);

#endif
