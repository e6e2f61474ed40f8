/* timer.c - millisecond timers (see timer.h). */
#include "timer.h"

int timer_add_ms(struct event *ev, int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return evtimer_add(ev, &tv);
}

struct event *timer_new_periodic(struct event_base *base, int64_t ms, event_callback_fn cb,
                                 void *arg)
{
    struct event *ev = event_new(base, -1, EV_PERSIST, cb, arg);
    if (ev)
        timer_add_ms(ev, ms);
    return ev;
}
