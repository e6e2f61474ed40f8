/* heartbeat.h - the NS:worker:<id> snapshot (PROTOCOL §5).
 *
 * Refreshed every few seconds with a TTL three times as long, so a worker
 * that dies disappears on its own; deleted on a clean exit.
 */
#ifndef JOBD_HEARTBEAT_H
#define JOBD_HEARTBEAT_H

#include <jansson.h>

struct daemon;
struct heartbeat;

struct heartbeat *heartbeat_create(struct daemon *d);
void heartbeat_free(struct heartbeat *hb);
/* Write the snapshot now (e.g. once intake is ready). */
void heartbeat_now(struct heartbeat *hb);
/* Remove the key (clean exit). */
void heartbeat_remove(struct heartbeat *hb);
/* The snapshot itself. */
json_t *heartbeat_snapshot(const struct daemon *d);

#endif
