/* admin.h - the admin HTTP endpoint at admin.listen: GET /healthz (200
 * when Redis is connected and the loop turns, 503 with a JSON reason
 * otherwise) and GET /metrics (Prometheus text format). At most
 * admin.max_connections clients at once; one request per connection. */
#ifndef JOBD_ADMIN_H
#define JOBD_ADMIN_H

#include <stdint.h>

struct daemon;
struct admin;

/* NULL with an error logged when the address cannot be bound; an empty
 * admin.listen returns NULL without error (*off set to 1). */
struct admin *admin_create(struct daemon *d, int *off);
void admin_free(struct admin *a);

/* Connections open now, and refused over admin.max_connections since the
 * start; zeros when A is NULL (the endpoint is off). */
void admin_counts(const struct admin *a, int *open, uint64_t *refused);

#endif
