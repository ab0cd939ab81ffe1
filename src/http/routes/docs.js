"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let spec = null;

  // An element with children: strings become text, never markup.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (value !== undefined && value !== null) node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // Text with `code` spans, in paragraphs.
  function prose(text) {
    return (text || "").split(/\n\n+/).filter(Boolean).map((paragraph) =>
      el("p", {}, paragraph.split("`").map((part, i) => (i % 2 ? el("code", {}, part) : part))));
  }

  // What a local $ref points to, or undefined.
  function target(ref) {
    if (typeof ref !== "string" || !ref.startsWith("#/")) return undefined;
    let node = spec;
    for (const raw of ref.slice(2).split("/")) {
      const key = decodeURIComponent(raw).replace(/~1/g, "/").replace(/~0/g, "~");
      if (node === null || typeof node !== "object" || !(key in node)) return undefined;
      node = node[key];
    }
    return node;
  }

  // A schema with its references resolved (to a bounded depth, so a
  // recursive schema still prints).
  function resolved(schema, depth) {
    if (depth > 6 || schema === null || typeof schema !== "object") return schema;
    if (Array.isArray(schema)) return schema.map((item) => resolved(item, depth + 1));
    if (typeof schema.$ref === "string" && Object.keys(schema).length === 1) {
      const found = target(schema.$ref);
      return found === undefined ? schema : resolved(found, depth + 1);
    }
    const out = {};
    for (const [key, value] of Object.entries(schema)) out[key] = resolved(value, depth + 1);
    return out;
  }

  function schemaBlock(schema) {
    return el("pre", {}, JSON.stringify(resolved(schema, 0), null, 2));
  }

  // A parameter or response, with its $ref followed.
  function deref(item) {
    return item && item.$ref ? target(item.$ref) || item : item;
  }

  function parametersOf(pathItem, operation) {
    return [...(pathItem.parameters || []), ...(operation.parameters || [])].map(deref);
  }

  function parametersTable(parameters) {
    return el("table", {},
      el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "schema"), el("th", {}, "")),
      parameters.map((p) => el("tr", {},
        el("td", {}, el("code", {}, p.name), p.required ? " *" : ""),
        el("td", {}, p.in),
        el("td", {}, el("code", {}, JSON.stringify(resolved(p.schema || {}, 0)))),
        el("td", {}, prose(p.description)))));
  }

  function responsesList(responses) {
    return el("table", {}, Object.entries(responses || {}).map(([code, raw]) => {
      const response = deref(raw) || {};
      const content = response.content || {};
      return el("tr", {},
        el("td", {}, el("code", {}, code)),
        el("td", {}, prose(response.description),
          Object.entries(content).map(([type, media]) => el("details", {},
            el("summary", {}, el("code", {}, type)),
            schemaBlock(media.schema || {})))));
    }));
  }

  // The "try it" form of one operation: its parameters, a JSON body,
  // and the answer it got.
  function tryIt(path, method, parameters, operation) {
    const fields = {};
    const rows = parameters.map((p) => {
      const input = el("input", {type: "text", "data-param": p.in + ":" + p.name,
        placeholder: p.name === "kwargs" ? "x=42&y=a (query string)" : p.name});
      fields[p.in + ":" + p.name] = {parameter: p, input};
      return el("tr", {}, el("td", {}, el("code", {}, p.name), " (" + p.in + ")"), el("td", {}, input));
    });
    const media = operation.requestBody && operation.requestBody.content || {};
    const bodyType = Object.keys(media).find((t) => t === "application/json") || Object.keys(media)[0];
    const body = bodyType ? el("textarea", {class: "body", placeholder: bodyType === "application/json" ? "{\"x\": 42}" : ""}) : null;
    const send = el("button", {type: "button", class: "send"}, "Send");
    const status = el("p", {class: "status"});
    const answer = el("pre", {class: "answer", hidden: ""});
    send.addEventListener("click", async () => {
      let url = path;
      const query = new URLSearchParams();
      const headers = {};
      for (const {parameter, input} of Object.values(fields)) {
        const value = input.value;
        if (value === "") continue;
        if (parameter.in === "path") url = url.replace("{" + parameter.name + "}", encodeURIComponent(value));
        else if (parameter.in === "header") headers[parameter.name] = value;
        else if (parameter.name === "kwargs") new URLSearchParams(value).forEach((v, k) => query.append(k, v));
        else query.append(parameter.name, value);
      }
      if (operation.security && $("token").value) headers.Authorization = "Bearer " + $("token").value;
      const init = {method: method.toUpperCase(), headers};
      if (body && body.value.trim() !== "") {
        headers["Content-Type"] = bodyType === "*/*" ? "application/json" : bodyType;
        init.body = body.value;
      }
      const qs = query.toString();
      status.textContent = "\u2026";
      status.className = "status";
      answer.hidden = true;
      try {
        const started = performance.now();
        const response = await fetch(url + (qs ? "?" + qs : ""), init);
        const text = await response.text();
        const ms = Math.round(performance.now() - started);
        status.textContent = response.status + " " + response.statusText + " \u00b7 " +
          (response.headers.get("content-type") || "no content type") + " \u00b7 " + ms + " ms";
        status.className = "status " + (response.ok ? "ok" : "bad");
        let shown = text;
        try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not one JSON value */ }
        answer.textContent = shown;
        answer.hidden = false;
      } catch (error) {
        status.textContent = "The request failed: " + error;
        status.className = "status bad";
      }
    });
    return el("div", {class: "try"}, el("h3", {}, "Try it"),
      rows.length ? el("table", {}, rows) : null,
      body ? [el("p", {class: "muted"}, "Body (" + bodyType + ")"), body] : null,
      el("p", {}, send), status, answer);
  }

  function operationView(path, method, pathItem, operation) {
    const parameters = parametersOf(pathItem, operation);
    const locked = Array.isArray(operation.security) && operation.security.length > 0 &&
      !operation.security.some((r) => Object.keys(r).length === 0);
    const view = el("details", {class: "op", "data-op": operation.operationId, "data-search": (method + " " + path + " " + (operation.summary || "")).toLowerCase()},
      el("summary", {},
        el("span", {class: "method m-" + method}, method),
        el("span", {class: "path"}, path),
        el("span", {class: "summary"}, operation.summary || ""),
        locked ? el("span", {class: "lock", title: "needs credentials"}, "auth") : null),
      el("div", {},
        el("p", {class: "muted"}, el("code", {}, operation.operationId || "")),
        prose(operation.description),
        parameters.length ? [el("h3", {}, "Parameters"), parametersTable(parameters)] : null,
        operation.requestBody ? [el("h3", {}, "Request body"),
          Object.entries(operation.requestBody.content || {}).map(([type, media]) =>
            el("div", {}, el("code", {}, type), schemaBlock(media.schema || {})))] : null,
        el("h3", {}, "Responses"), responsesList(operation.responses),
        tryIt(path, method, parameters, operation)));
    return view;
  }

  function render() {
    $("title").textContent = (spec.info && spec.info.title || "API") + " " + (spec.info && spec.info.version || "");
    const about = $("about");
    about.textContent = "";
    about.append(...prose(spec.info && spec.info.description));
    const servers = (spec.servers || []).map((s) => s.url).join(", ");
    if (servers) about.append(el("p", {class: "muted"}, "Served at ", el("code", {}, servers)));
    $("token-label").hidden = !(spec.components && spec.components.securitySchemes);
    const groups = new Map();
    for (const [path, pathItem] of Object.entries(spec.paths || {})) {
      for (const [method, operation] of Object.entries(pathItem)) {
        if (method === "parameters" || typeof operation !== "object") continue;
        const tag = (operation.tags && operation.tags[0]) || "other";
        if (!groups.has(tag)) groups.set(tag, []);
        groups.get(tag).push(operationView(path, method, pathItem, operation));
      }
    }
    const main = $("operations");
    main.textContent = "";
    const described = new Map((spec.tags || []).map((t) => [t.name, t.description]));
    const order = [...(spec.tags || []).map((t) => t.name), ...groups.keys()];
    for (const tag of new Set(order)) {
      if (!groups.has(tag)) continue;
      main.append(el("section", {}, el("h2", {}, tag), prose(described.get(tag)), groups.get(tag)));
    }
  }

  $("filter").addEventListener("input", () => {
    const needle = $("filter").value.trim().toLowerCase();
    for (const op of document.querySelectorAll("details.op")) {
      op.hidden = needle !== "" && !op.dataset.search.includes(needle);
    }
  });

  fetch("/_/openapi.json", {headers: {Accept: "application/json"}})
    .then((response) => {
      if (!response.ok) throw new Error(response.status + " " + response.statusText);
      return response.json();
    })
    .then((doc) => { spec = doc; render(); })
    .catch((error) => { $("about").textContent = "Could not load /_/openapi.json: " + error; });
})();
