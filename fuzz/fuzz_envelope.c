/* fuzz_envelope.c - libFuzzer target: envelope_parse() (PROTOCOL §2, §3).
 *
 * The input is a message exactly as a producer sends it (the "job" field of
 * a stream entry or a pub/sub payload). It is parsed twice, with every job
 * type enabled and with the defaults, and each outcome is turned into the
 * result record the daemon would store; support.c checks that record.
 */
#include <stddef.h>
#include <stdint.h>

#include "support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const int64_t queued_at = 1764000000000LL;
    fuzz_envelope(fuzz_daemon(1), (const char *)data, size, queued_at, 0);
    fuzz_envelope(fuzz_daemon(0), (const char *)data, size, queued_at, 0);
    return 0;
}
