/* redis.h - the daemon's three hiredis connections, kept alive.
 *
 * hiredis 0.14.1 wants separate contexts for commands, for SUBSCRIBE and for
 * a blocking XREADGROUP (a blocking command stalls everything queued behind
 * it). This module connects each one, authenticates, enforces connect and
 * command timeouts hiredis lacks, and reconnects with capped exponential
 * backoff and jitter. Users learn of a connection through ready/down hooks.
 */
#ifndef JOBD_REDIS_H
#define JOBD_REDIS_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>

struct daemon;
struct redis;

enum redis_role { REDIS_CMD = 0, REDIS_SUB, REDIS_STREAM, REDIS_NROLES };

/* reply is NULL when the connection went away before the reply came. The
 * reply is freed when the callback returns: copy what you keep. */
typedef void redis_reply_fn(struct redis *r, redisReply *reply, void *priv);

struct redis_hooks {
    void (*ready)(void *arg);   /* connected and authenticated */
    void (*down)(void *arg);    /* connection lost; a reconnect is scheduled */
    void *arg;
};

struct redis *redis_create(struct daemon *d);
void redis_set_hooks(struct redis *r, enum redis_role role, const struct redis_hooks *hooks);
/* Begin connecting every role. */
void redis_start(struct redis *r);
/* Close every connection (pending callbacks get NULL) and free. */
void redis_free(struct redis *r);

bool redis_ready(const struct redis *r, enum redis_role role);
/* Connecting or authenticating: ready soon, or failed (no down hook then). */
bool redis_connecting(const struct redis *r, enum redis_role role);
/* In a down hook: the error hiredis dropped the connection for (a reply it
 * had no callback for, such as a SUBSCRIBE's NOPERM), or "". */
const char *redis_down_reason(const struct redis *r, enum redis_role role);
/* "command", "subscriber" or "stream". */
const char *redis_role_name(enum redis_role role);

/* Send one command on a role's connection. Returns 0, or -1 when that
 * connection is not ready (fn is then not called). timeout_ms: how long the
 * reply may take before the connection is declared dead, unless the reply is
 * still coming in (bytes arrived within the last quarter second); 0 for the
 * default. */
int redis_send(struct redis *r, enum redis_role role, redis_reply_fn *fn, void *priv,
               int64_t timeout_ms, int argc, const char **argv, const size_t *lens);
/* printf-style for short commands with no binary arguments. */
int redis_sendf(struct redis *r, enum redis_role role, redis_reply_fn *fn, void *priv,
                const char *fmt, ...);

/* Send one command queued in a MULTI, formatted here as RESP instead of by
 * hiredis (its sdscatfmt() formatting and our per-command bookkeeping were a
 * tenth of the cost of writing outcomes). The EXEC, sent with redis_send(),
 * carries the deadline for all of them. FN (may be NULL) gets the reply,
 * "QUEUED" or Redis's refusal, straight from hiredis: NULL when the
 * connection went first. Returns 0, or -1 when the connection is not ready. */
int redis_send_queued(struct redis *r, enum redis_role role, redisCallbackFn *fn, void *priv,
                      int argc, const char **argv, const size_t *lens);

/* The raw hiredis context of a ready connection (for SUBSCRIBE, whose
 * callback runs once per message), or NULL. */
redisAsyncContext *redis_context(struct redis *r, enum redis_role role);

/* Drop a connection and reconnect (e.g. the subscriber stopped hearing its
 * own heartbeat). */
void redis_reset(struct redis *r, enum redis_role role, const char *why);

/* Is ERR (an error reply) about the key the command named: a key of another
 * type, or one the ACL user may not touch ("... access one of the keys
 * ...")? Not an error about Redis itself (LOADING, BUSY, READONLY, OOM),
 * which passes, nor NOPERM for the command ("... run the 'xgroup|create'
 * command": a user whose groups an admin makes). */
bool redis_key_error(const char *err);
/* A stream whose ids are used up ("ERR The stream has exhausted the last
 * possible ID", after an XADD with the largest id): it takes no entry, and
 * no ACL or type repair changes that. */
bool redis_stream_full(const char *err);

/* Commands sent on the connection and not yet answered. */
int redis_outstanding(const struct redis *r, enum redis_role role);
uint64_t redis_reconnects(const struct redis *r);

#endif
