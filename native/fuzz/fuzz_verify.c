// SPDX-License-Identifier: Apache-2.0
/*
 * libFuzzer harness for the verifier's fast path: st_verify_run() reads journal files that an
 * attacker may have written, so it must stay inside its buffer on any input.
 *   make fuzz-native FUZZ_SECONDS=60
 * The input's first byte picks which state the run starts from; the rest is the segment.
 */
#include <stdint.h>
#include <string.h>

#include "../stnative.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	struct st_chain chain;
	struct st_verify st;
	memset(&chain, 0, sizeof(chain));
	memset(&st, 0, sizeof(st));
	st.chain = &chain;
	st.host = "h";
	st.host_len = 1;
	st.boot = "b";
	st.boot_len = 1;
	st.limit = data[0] & 1 ? 3 : UINT64_MAX;
	chain.next_seq = data[0] >> 1;
	uint64_t end = st_verify_run(&st, data + 1, size - 1, 0);
	if (end > size - 1)
		__builtin_trap();
	return 0;
}
