"""Forensic provenance of a session, and its export as a methods appendix.

Per call: the alias asked for, the proxy deployment that served it, the model id the provider
actually returned (from the proxy ledger: the response the client sees carries only the alias),
``system_fingerprint``, every generation parameter, the LiteLLM version that answered, and the
hashes of prompt and answer. Per model: its registry entry (route, context window, prices,
capabilities). Per session: dates, corpus/framework/experiment hashes, costs, software versions,
and flags such as one alias answered by several provider versions (the provider updated the
model mid-session: results before and after may not be comparable).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from mva_dagster.llm.archive import ArchiveEntry, SessionArchive
from mva_dagster.llm.conversations import prompt_sha256
from mva_dagster.observe.files import proxy_info_path
from mva_dagster.observe.ledger import (
    ledger_line_for,
    paid_by_session,
    session_ledger,
    success_by_call,
    sync_session_ledger,
)
from mva_dagster.records import canonical_json, sha256_text
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.manager import load_manifest

_MD_CALL_ROWS = 200  # beyond this the Markdown points at the JSON export for per-call rows


def provider_versions(lines: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Alias -> {model id the provider returned: successful calls}."""
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    for item in lines:
        if item.get("status") == "success" and item.get("provider_response_model"):
            seen[str(item.get("model_group") or "?")][str(item["provider_response_model"])] += 1
    return {alias: dict(sorted(c.items())) for alias, c in sorted(seen.items())}


def version_drift(lines: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Aliases whose successful calls came back from more than one provider model id."""
    return {alias: v for alias, v in provider_versions(lines).items() if len(v) > 1}


def _header(entry: ArchiveEntry, name: str) -> str | None:
    for key, value in entry.answer.response_headers.items():
        if key.lower() == name:
            return value
    return None


def _call(entry: ArchiveEntry, line: dict[str, Any] | None, by_call: dict[str, dict[str, Any]]) -> dict[str, Any]:
    request, answer = entry.request, entry.answer
    system = next((m.get("content", "") for m in request.messages if m.get("role") == "system"), "")
    user = "\n".join(m.get("content", "") for m in request.messages if m.get("role") == "user")
    retries = _header(entry, "x-litellm-attempted-retries")
    return {
        "document_id": request.document_id, "model": request.model, "replicate": request.replicate,
        "purpose": request.purpose, "request_key": request.key(), "call_id": answer.call_id,
        "started_at": answer.started_at, "finished_at": answer.finished_at, "latency_s": answer.latency_s,
        "attempts": answer.attempts, "proxy_retries": int(retries) if retries and retries.isdigit() else None,
        "deployment": (line or {}).get("model_id") or _header(entry, "x-litellm-model-id"),
        "litellm_model": (line or {}).get("litellm_model") or _header(entry, "x-litellm-model-name"),
        "api_base": (line or {}).get("api_base") or _header(entry, "x-litellm-model-api-base"),
        "provider_model": (line or {}).get("provider_response_model"),
        "response_model_seen_by_client": answer.provider_model,
        "system_fingerprint": answer.system_fingerprint or (line or {}).get("system_fingerprint"),
        "litellm_version": _header(entry, "x-litellm-version"),
        "params": request.params,
        "prompt_sha256": prompt_sha256(request.messages), "system_prompt_sha256": sha256_text(system),
        "user_prompt_sha256": sha256_text(user),
        "response_format_sha256": sha256_text(canonical_json(request.response_format))
        if request.response_format is not None else None,
        "response_sha256": sha256_text(answer.raw_text) if answer.raw_text is not None else None,
        "finish_reason": answer.finish_reason, "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens, "cost_usd": answer.cost_usd,
        "ledger_cost_usd": (line or {}).get("response_cost"), "in_ledger": line is not None,
        # 'call' (sent by this session), or where the archive got it: reused_from / recovered_from / ...
        "answer_source": next(iter(entry.provenance), "call"), "paid_by_session": paid_by_session(entry),
        "model_used": answer.model_used, "fallback_used": answer.fallback_used,
        "superseded": [{"call_id": s.call_id, "reask_reason": answer.reask_reason, "cost_usd": s.cost_usd,
                        "provider_model": by_call.get(s.call_id or "", {}).get("provider_response_model"),
                        "ledger_cost_usd": by_call.get(s.call_id or "", {}).get("response_cost"),
                        "response_sha256": sha256_text(s.raw_text) if s.raw_text is not None else None}
                       for s in answer.superseded],
    }


def _paid(call: dict[str, Any], field: str = "cost_usd") -> float:
    """What the session paid for one call (its answer and any a re-ask replaced), per ``field``."""
    if not call["paid_by_session"]:
        return 0.0
    return float(call[field] or 0.0) + sum(float(s[field] or 0.0) for s in call["superseded"])


def _registry_entry(alias: str) -> dict[str, Any] | None:
    from mva_dagster.errors import SpecError
    from mva_dagster.llm.registry import load_registry

    try:
        entry = load_registry().resolve(alias)
    except SpecError:
        return None
    data = entry.model_dump(mode="json")
    data.pop("env", None)  # variable names only, but they say nothing about the model
    return data


def build_provenance(layout: SessionLayout, *, sync: bool = True) -> dict[str, Any]:
    """Everything the methods appendix says, as one JSON-ready dict (calls in archive order)."""
    manifest = load_manifest(layout)
    entries = SessionArchive(layout).entries()
    lines = (sync_session_ledger(layout, manifest.provider, entries=entries) if sync
             else session_ledger(layout))
    by_call, by_key = success_by_call(lines)
    calls = [_call(e, ledger_line_for(e, by_call, by_key), by_call) for e in entries]
    models: dict[str, dict[str, Any]] = {}
    for alias in dict.fromkeys([*manifest.models, *(c["model"] for c in calls)]):
        mine = [c for c in calls if c["model"] == alias]
        models[alias] = {
            "calls": len(mine),
            "provider_versions": dict(Counter(c["provider_model"] or "unknown" for c in mine)),
            "deployments": sorted({f"{c['deployment']} ({c['litellm_model']})" for c in mine if c["deployment"]}),
            "system_fingerprints": dict(Counter(c["system_fingerprint"] or "none" for c in mine)),
            "first_call": min((c["started_at"] for c in mine), default=None),
            "last_call": max((c["finished_at"] for c in mine), default=None),
            "prompt_tokens": sum(c["prompt_tokens"] or 0 for c in mine),
            "completion_tokens": sum(c["completion_tokens"] or 0 for c in mine),
            "cost_usd": round(sum(_paid(c) for c in mine), 8),
            "registry": _registry_entry(alias),
        }
    flags: list[dict[str, Any]] = []
    for alias, versions in version_drift(lines).items():
        described = ", ".join(f"{v} ({n} calls)" for v, n in versions.items())
        flags.append({"kind": "model_version_drift", "model": alias, "versions": versions,
                      "message": f"{alias} was answered by {len(versions)} provider versions: {described}"})
    missing = [c for c in calls if not c["in_ledger"]]
    if missing:
        flags.append({"kind": "ledger_missing", "calls": len(missing),
                      "message": f"{len(missing)} of {len(calls)} calls have no proxy ledger line, so the "
                                 "provider's model id is unknown for them (the proxy's ledger was not found "
                                 "from this MVA_HOME, or was rotated)"})
    proxies: list[dict[str, Any]] = []
    if proxy_info_path(layout).exists():
        proxies = list(json.loads(proxy_info_path(layout).read_text(encoding="utf-8")).get("proxies", []))
    litellm_versions = sorted({c["litellm_version"] for c in calls if c["litellm_version"]})
    analysis = [c for c in calls if c["purpose"] == "analysis"]
    system_prompts: dict[str, list[str]] = defaultdict(list)
    for c in calls:
        if c["system_prompt_sha256"] not in system_prompts[c["purpose"]]:
            system_prompts[c["purpose"]].append(c["system_prompt_sha256"])
    return {
        "session": {"id": manifest.session_id, "project": manifest.project, "experiment": manifest.experiment,
                    "created_at": manifest.created_at, "status": manifest.status, "provider_mode": manifest.provider,
                    "path": str(layout.root),
                    "first_call": min((c["started_at"] for c in calls), default=None),
                    "last_call": max((c["finished_at"] for c in calls), default=None)},
        "design": {"models": manifest.models, "model_override": manifest.model_override,
                   "runs_per_model": manifest.runs_per_model, "documents": len(manifest.documents),
                   "planned_calls": len(manifest.documents) * len(manifest.models) * manifest.runs_per_model,
                   "answered_calls": len(analysis),
                   "other_calls": dict(Counter(c["purpose"] for c in calls if c["purpose"] != "analysis")),
                   "analysis_variant": manifest.analysis_variant,
                   "prompt_metadata": manifest.prompt_metadata},
        "parameters": manifest.generation,
        "hashes": {"experiment_sha256": manifest.experiment_sha256, "framework_sha256": manifest.framework_sha256,
                   "framework": f"{manifest.framework_name} {manifest.framework_version}",
                   "corpus_sha256": manifest.corpus_sha256,
                   "system_prompts_sha256": dict(system_prompts),
                   "response_formats_sha256": sorted({c["response_format_sha256"] for c in calls
                                                      if c["response_format_sha256"]}),
                   "documents": [{"id": d.id, "sha256": d.sha256, "words": d.n_words} for d in manifest.documents]},
        "models": models,
        "costs": {"total_usd": round(sum(_paid(c) for c in calls), 8),
                  "ledger_total_usd": round(sum(_paid(c, "ledger_cost_usd") for c in calls), 8),
                  "reused_answers": sum(1 for c in calls if not c["paid_by_session"]),
                  "prompt_tokens": sum(c["prompt_tokens"] or 0 for c in calls),
                  "completion_tokens": sum(c["completion_tokens"] or 0 for c in calls),
                  "note": "simulated provider: what the calls would have cost at list prices"
                  if manifest.provider == "simulated" else None},
        "software": {**manifest.software, "litellm_proxy": ", ".join(litellm_versions) or "unknown",
                     "proxy_configs": proxies},
        "flags": flags,
        "calls": calls,
    }


def _row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _price(per_token: Any) -> str:
    return f"${float(per_token) * 1e6:.2f}" if isinstance(per_token, int | float) else "?"


def to_markdown(prov: dict[str, Any]) -> str:
    """The methods appendix: prose a paper can cite, then the tables behind it."""
    s, d, h, c = prov["session"], prov["design"], prov["hashes"], prov["costs"]
    versions = "; ".join(f"{alias}: " + ", ".join(f"`{v}`" for v in m["provider_versions"])
                         for alias, m in prov["models"].items())
    out = [
        f"# Methods appendix: {s['project']} / {s['experiment']} / {s['id']}", "",
        f"Texts were analysed with the framework **{h['framework']}** (sha256 `{h['framework_sha256']}`), "
        f"analysis variant `{d['analysis_variant']}`. Each of {d['documents']} documents (corpus sha256 "
        f"`{h['corpus_sha256']}`) was sent to {len(d['models'])} model(s) {d['runs_per_model']} time(s): "
        f"{d['planned_calls']} analysis calls planned, {d['answered_calls']} answered"
        + "".join(f", plus {n} {purpose} call(s)" for purpose, n in d["other_calls"].items())
        + f", between {s['first_call']} and "
        f"{s['last_call']} (UTC), through a LiteLLM proxy (version {prov['software']['litellm_proxy']}) "
        f"in `{s['provider_mode']}` mode. Model ids as returned by the provider: {versions or 'none'}.", "",
        "## Models", "",
        _row(["alias", "provider version(s) returned (calls)", "deployment", "calls", "tokens in / out",
              "cost USD", "context window", "list price in / out per M"]),
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for alias, m in prov["models"].items():
        reg = m["registry"] or {}
        out.append(_row([
            f"`{alias}`", ", ".join(f"`{v}` ({n})" for v, n in m["provider_versions"].items()),
            ", ".join(m["deployments"]) or "?", m["calls"], f"{m['prompt_tokens']} / {m['completion_tokens']}",
            f"{m['cost_usd']:.6f}", reg.get("context_window", "?"),
            f"{_price(reg.get('input_cost_per_token'))} / {_price(reg.get('output_cost_per_token'))}"]))
    out += ["", "## Generation parameters", "", _row(["parameter", "value"]), "|---|---|"]
    out += [_row([f"`{k}`", json.dumps(v)]) for k, v in sorted(prov["parameters"].items())]
    out.append(_row(["`seed`", "the run number (1, 2, ...): replicates are distinct, reproducible calls"]))
    out += ["", "## Hashes (sha256)", "", _row(["item", "sha256"]), "|---|---|",
            _row(["experiment snapshot", f"`{h['experiment_sha256']}`"]),
            _row(["framework snapshot", f"`{h['framework_sha256']}`"]),
            _row(["corpus", f"`{h['corpus_sha256']}`"])]
    out += [_row([f"system prompt ({purpose})", f"`{x}`"])
            for purpose, hashes in h["system_prompts_sha256"].items() for x in hashes]
    out += [_row(["response format (JSON Schema)", f"`{x}`"]) for x in h["response_formats_sha256"]]
    if len(h["documents"]) <= 50:
        out += [_row([f"document `{doc['id']}`", f"`{doc['sha256']}`"]) for doc in h["documents"]]
    out += ["", "## Costs", "",
            f"- Total: ${c['total_usd']:.6f} as reported per call by the proxy; proxy ledger: "
            f"${c['ledger_total_usd']:.6f}; tokens {c['prompt_tokens']} in, {c['completion_tokens']} out."]
    if c.get("note"):
        out.append(f"- {c['note']}.")
    out += ["", "## Software", "", _row(["component", "version"]), "|---|---|"]
    out += [_row([k, v]) for k, v in prov["software"].items() if k != "proxy_configs"]
    out += [_row([f"proxy config ({p.get('mode')})", f"sha256 `{p.get('config_hash')}`"])
            for p in prov["software"]["proxy_configs"]]
    out += ["", "## Flags", ""]
    out += [f"- **{f['kind']}**: {f['message']}" for f in prov["flags"]] or ["- none"]
    calls = prov["calls"]
    out += ["", "## Calls", ""]
    if len(calls) > _MD_CALL_ROWS:
        out.append(f"{len(calls)} calls: see the JSON export (`--format json`) for one row per call.")
    else:
        out += [_row(["document", "model", "run", "provider version", "fingerprint", "prompt sha256",
                      "started (UTC)", "tokens in / out", "cost USD"]),
                "|---|---|---:|---|---|---|---|---:|---:|"]
        out += [_row([x["document_id"], x["model"], x["replicate"], x["provider_model"] or "unknown",
                      x["system_fingerprint"] or "", f"`{x['prompt_sha256'][:16]}`", x["started_at"],
                      f"{x['prompt_tokens']} / {x['completion_tokens']}", f"{x['cost_usd'] or 0:.6f}"])
                for x in calls]
    return "\n".join(out) + "\n"



def observed_provider_versions(layout: SessionLayout) -> dict[str, dict[str, int]]:
    """Alias -> {provider model id: calls}, from the ledger lines copied into the session."""
    return provider_versions(session_ledger(layout))
