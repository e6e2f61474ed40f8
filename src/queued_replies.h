/* queued_replies.h - what Redis answered to the commands queued in a MULTI.
 *
 * Redis refuses some commands already as they are queued (an ACL's NOPERM
 * for a key or channel, an unknown command, a wrong number of arguments);
 * EXEC then answers EXECABORT and runs none of the transaction, without
 * saying which command it was. The queued commands' own replies say so. They
 * come in order, all before their EXEC's, so each one is noted here by its
 * transaction's id and its place in it, and a transaction takes its
 * refusals when its EXEC reply comes. By id, not by pointer: a transaction
 * whose EXEC could not be sent is freed while its replies are still due.
 */
#ifndef JOBD_QUEUED_REPLIES_H
#define JOBD_QUEUED_REPLIES_H

#include <stdint.h>

struct queued_refusal {
    int cmd;                    /* its place among the commands after the MULTI */
    char *err;                  /* Redis's error */
};

/* The reply to the next command queued in transaction TXN: ERR, or NULL
 * when Redis queued it (or the connection went first). Transactions are
 * numbered upwards from 1, in the order they are sent. */
void queued_reply_note(uint64_t txn, const char *err);
/* TXN's refusals, in order, into *OUT (the caller frees them with
 * queued_refusals_free()); those of earlier transactions are forgotten.
 * Returns how many, or -1 when one of them could not be kept (out of
 * memory): then which commands Redis refused is not known. */
int queued_refusals_take(uint64_t txn, struct queued_refusal **out);
void queued_refusals_free(struct queued_refusal *v, int n);
/* Forget everything (shutdown). */
void queued_replies_reset(void);

#endif
