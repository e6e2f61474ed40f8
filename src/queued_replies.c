/* queued_replies.c - the refusals of commands queued in a MULTI (see
 * queued_replies.h). Refusals are rare and few; a plain array will do. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "queued_replies.h"

struct noted {
    uint64_t txn;
    struct queued_refusal r;
};

static struct {
    uint64_t txn;               /* the transaction whose replies are coming in */
    int next;                   /* the place of its next reply */
    uint64_t incomplete;        /* a transaction one of whose refusals was not kept */
    struct noted *v;
    int n, cap;
} q;

void queued_reply_note(uint64_t txn, const char *err)
{
    if (txn != q.txn) {
        q.txn = txn;
        q.next = 0;
    }
    int cmd = q.next++;
    if (!err)
        return;
    if (q.n == q.cap) {
        int cap = q.cap ? 2 * q.cap : 8;
        struct noted *grown = realloc(q.v, (size_t)cap * sizeof(*grown));
        if (!grown) {
            q.incomplete = txn;
            return;
        }
        q.v = grown;
        q.cap = cap;
    }
    char *copy = strdup(err);
    if (!copy) {
        q.incomplete = txn;
        return;
    }
    q.v[q.n++] = (struct noted){.txn = txn, .r = {.cmd = cmd, .err = copy}};
}

int queued_refusals_take(uint64_t txn, struct queued_refusal **out)
{
    int n = 0, kept = 0;
    *out = NULL;
    for (int i = 0; i < q.n; i++)
        n += q.v[i].txn == txn;
    struct queued_refusal *v = n ? calloc((size_t)n, sizeof(*v)) : NULL;
    bool lost = q.incomplete == txn || (n && !v);
    n = 0;
    for (int i = 0; i < q.n; i++) {
        if (q.v[i].txn == txn && v)
            v[n++] = q.v[i].r;
        else if (q.v[i].txn > txn)
            q.v[kept++] = q.v[i];   /* a later transaction's, its EXEC still to come */
        else
            free(q.v[i].r.err);     /* an earlier one's (its EXEC reply was lost), or ours */
    }
    q.n = kept;
    if (lost) {
        queued_refusals_free(v, n);
        return -1;
    }
    *out = v;
    return n;
}

void queued_refusals_free(struct queued_refusal *v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i].err);
    free(v);
}

void queued_replies_reset(void)
{
    for (int i = 0; i < q.n; i++)
        free(q.v[i].r.err);
    free(q.v);
    memset(&q, 0, sizeof(q));
}
