"""Text data for the course.

* :mod:`llm_course.data.corpus` -- the default corpus, the Python standard
  library's own sources (no download), and JSON Lines helpers
  (``iter_documents``, ``default_corpus_text``, ``write_jsonl``, ``read_jsonl``,
  ``load_sample``).
* :mod:`llm_course.data.pretrain` -- ``build_pretrain_data``: local files to shuffled,
  sharded, resumable ``(input_ids, labels)`` batches; :mod:`llm_course.data.streaming`
  does the same for a streamed data set.
"""
