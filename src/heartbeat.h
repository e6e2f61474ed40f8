/* heartbeat.h - the NS:worker:<id> snapshot (PROTOCOL §5).
 *
 * Refreshed every few seconds with a TTL three times as long, so a worker
 * that dies disappears on its own; deleted on a clean exit. Each write also
 * reads back the snapshot it replaces, to notice another live daemon with
 * the same worker name (logged, and counted for /metrics).
 */
#ifndef JOBD_HEARTBEAT_H
#define JOBD_HEARTBEAT_H

#include <jansson.h>
#include <stdint.h>

struct daemon;
struct heartbeat;

struct heartbeat *heartbeat_create(struct daemon *d);
void heartbeat_free(struct heartbeat *hb);
/* Write the snapshot now (e.g. once intake is ready). */
void heartbeat_now(struct heartbeat *hb);
/* Remove the key (clean exit). */
void heartbeat_remove(struct heartbeat *hb);
/* Writes that found another live daemon's snapshot under our worker name. */
uint64_t heartbeat_collisions(const struct heartbeat *hb);
/* The snapshot itself. */
json_t *heartbeat_snapshot(const struct daemon *d);

#endif
