/* admin.h - the admin HTTP endpoint (libevent evhttp) at admin.listen:
 * GET /healthz (200 when Redis is connected and the loop turns, 503 with a
 * JSON reason otherwise) and GET /metrics (Prometheus text format). */
#ifndef JOBD_ADMIN_H
#define JOBD_ADMIN_H

struct daemon;
struct admin;

/* NULL with an error logged when the address cannot be bound; an empty
 * admin.listen returns NULL without error (*off set to 1). */
struct admin *admin_create(struct daemon *d, int *off);
void admin_free(struct admin *a);

#endif
