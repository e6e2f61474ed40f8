/* exec_http.h - the "http" type's set-up. */
#ifndef JOBD_EXEC_HTTP_H
#define JOBD_EXEC_HTTP_H

struct daemon;

/* One libcurl multi handle on the daemon's loop; -1 when libcurl fails. */
int http_executor_init(struct daemon *d);
void http_executor_shutdown(struct daemon *d);

/* For /metrics: sockets libcurl has open and watched, transfers running,
 * jobs waiting for a transfer slot, name lookups that stopped transfers left
 * running. */
void http_counts(int *sockets, int *transfers, int *waiting, int *abandoned_lookups);

#endif
