/* encode.h - turning bytes into JSON values: hex digests, and text that
 * falls back to base64 when it is not UTF-8. */
#ifndef JOBD_ENCODE_H
#define JOBD_ENCODE_H

#include <jansson.h>
#include <stddef.h>

/* Lowercase hex of LEN bytes into OUT (2 * LEN + 1 bytes). */
void hex_encode(const unsigned char *bytes, size_t len, char *out);

/* Set OBJ[TEXT_KEY] to BUF as a string when it is valid UTF-8 without NUL,
 * else OBJ[BASE64_KEY] to its base64. Returns 0, or -1 when out of memory. */
int json_set_text_or_base64(json_t *obj, const char *text_key, const char *base64_key,
                            const char *buf, size_t len);

#endif
