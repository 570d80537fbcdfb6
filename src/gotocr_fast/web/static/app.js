/* The gotocr_fast web page. It uses only the public HTTP API, as any client would:
 *   GET  /health, /version                       server state and model name
 *   POST /v1/chat/completions (stream: true)     one prompt, text streamed as it is generated
 *   POST /v1/ocr                                 a PDF read page by page (one answer per page)
 * Strict CSP: no inline script or handler; every text from the server goes in through textContent
 * or through GotRender (which escapes it).
 */
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var RENDER_INTERVAL_MS = 120;   // re-render the formatted view at most this often while streaming
  var HEALTH_POLL_MS = 2000;

  var state = {
    files: [],          // [{name, type, dataUri, objectUrl}]
    box: null,          // [x1, y1, x2, y2] in the preview image's own pixels
    results: [],        // [{label, text, finish_reason}]
    usage: { prompt: 0, completion: 0 },
    controller: null,
    renderTimer: 0,
  };

  // ------------------------------------------------------------------ server state

  function headers(json) {
    var h = {};
    if (json) h["Content-Type"] = "application/json";
    var key = $("api-key").value.trim();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  function pollHealth() {
    fetch("/health", { cache: "no-store" }).then(function (r) {
      return r.json().then(function (body) { return [r.status, body]; });
    }).then(function (res) {
      var body = res[1], el = $("server-status");
      el.dataset.state = body.status;
      el.textContent = body.status === "ready" ? "model ready" : body.status + (body.message ? ": " + body.message : "");
      $("model-name").textContent = body.model || "";
      if (body.status === "loading") setTimeout(pollHealth, HEALTH_POLL_MS);
    }).catch(function () {
      var el = $("server-status");
      el.dataset.state = "unreachable";
      el.textContent = "server unreachable";
      setTimeout(pollHealth, HEALTH_POLL_MS * 2);
    });
  }

  // ------------------------------------------------------------------ inputs

  function readAsDataUri(file) {
    return new Promise(function (resolve, reject) {
      var reader = new FileReader();
      reader.onload = function () { resolve(reader.result); };
      reader.onerror = function () { reject(reader.error); };
      reader.readAsDataURL(file);
    });
  }

  function isPdf(f) { return f.type === "application/pdf" || /\.pdf$/i.test(f.name); }

  function setFiles(fileList) {
    var files = Array.prototype.slice.call(fileList || []).filter(function (f) {
      return f.type.indexOf("image/") === 0 || isPdf(f);
    });
    if (!files.length) { showError("Not an image or PDF."); return; }
    clearError();
    state.files.forEach(function (f) { if (f.objectUrl) URL.revokeObjectURL(f.objectUrl); });
    Promise.all(files.map(readAsDataUri)).then(function (uris) {
      state.files = files.map(function (f, i) {
        var pdf = isPdf(f);
        return {
          name: f.name || "pasted image", type: pdf ? "application/pdf" : f.type, pdf: pdf,
          dataUri: pdf ? uris[i].replace(/^data:[^;,]*/, "data:application/pdf") : uris[i],
          objectUrl: pdf ? null : URL.createObjectURL(f),
        };
      });
      showFiles();
    }, function (err) { showError("Cannot read the file: " + err); });
  }

  function showFiles() {
    var list = $("file-list");
    list.textContent = "";
    state.files.forEach(function (f) {
      var li = document.createElement("li");
      li.textContent = f.name + (f.pdf ? " (PDF)" : "");
      list.appendChild(li);
    });
    var first = state.files.find(function (f) { return !f.pdf; });
    clearBox();
    if (first) {
      $("preview").src = first.objectUrl;
      $("stage").hidden = false;
    } else {
      $("preview").removeAttribute("src");
      $("stage").hidden = true;
    }
    updateControls();
  }

  // ------------------------------------------------------------------ box drawing

  var drag = null;

  function imagePoint(ev) {
    var img = $("preview"), r = img.getBoundingClientRect();
    var x = Math.min(Math.max(ev.clientX - r.left, 0), r.width);
    var y = Math.min(Math.max(ev.clientY - r.top, 0), r.height);
    return { x: x, y: y, w: r.width, h: r.height };
  }

  function drawRect(a, b) {
    var el = $("box-rect");
    el.style.left = Math.min(a.x, b.x) + "px";
    el.style.top = Math.min(a.y, b.y) + "px";
    el.style.width = Math.abs(a.x - b.x) + "px";
    el.style.height = Math.abs(a.y - b.y) + "px";
    el.hidden = false;
  }

  function clearBox() {
    state.box = null;
    $("box-rect").hidden = true;
  }

  function onPointerDown(ev) {
    if (mode() !== "box" || ev.button !== 0) return;
    ev.preventDefault();
    drag = { start: imagePoint(ev) };
    $("stage").setPointerCapture(ev.pointerId);
    drawRect(drag.start, drag.start);
  }

  function onPointerMove(ev) {
    if (!drag) return;
    drawRect(drag.start, imagePoint(ev));
  }

  function onPointerUp(ev) {
    if (!drag) return;
    var a = drag.start, b = imagePoint(ev);
    drag = null;
    var img = $("preview");
    var sx = img.naturalWidth / a.w, sy = img.naturalHeight / a.h;
    var box = [Math.min(a.x, b.x) * sx, Math.min(a.y, b.y) * sy, Math.max(a.x, b.x) * sx, Math.max(a.y, b.y) * sy]
      .map(Math.round);
    if (box[2] - box[0] < 2 || box[3] - box[1] < 2) { clearBox(); updateControls(); return; }
    state.box = box;
    $("box-rect").dataset.box = JSON.stringify(box);
    updateControls();
  }

  // ------------------------------------------------------------------ options

  function mode() {
    var checked = document.querySelector('input[name="mode"]:checked');
    return checked ? checked.value : "plain";
  }

  function isFormat() {
    var m = mode();
    return m === "format" || (m !== "plain" && $("format-too").checked);
  }

  function baseOptions() {
    var m = mode(), o = { ocr_type: isFormat() ? "format" : "plain" };
    if (m === "box" && state.box) o.box = state.box;
    if (m === "color") o.color = $("color").value;
    if (m === "crop") o.crop = true;
    var maxTokens = parseInt($("max-tokens").value, 10);
    if (maxTokens > 0) o.max_tokens = maxTokens;
    return o;
  }

  function updateControls() {
    var m = mode(), busy = state.controller !== null;
    var images = state.files.filter(function (f) { return !f.pdf; });
    $("box-hint").hidden = m !== "box";
    $("stage").classList.toggle("drawing", m === "box");
    var ready = state.files.length > 0 && (m !== "box" || (state.box !== null && images.length === 1 && state.files.length === 1));
    $("run").disabled = busy || !ready;
    $("stop").disabled = !busy;
    var has = state.results.some(function (r) { return r.text; });
    $("copy").disabled = busy || !has;
    $("download").disabled = busy || !has;
    $("download-json").disabled = busy || !has;
  }

  // ------------------------------------------------------------------ output

  function showError(msg) {
    var el = $("error");
    el.textContent = msg;
    el.hidden = false;
  }

  function clearError() { $("error").hidden = true; $("error").textContent = ""; }

  function allText() {
    if (state.results.length === 1) return state.results[0].text;
    return state.results.map(function (r) { return "==> " + r.label + " <==\n" + r.text; }).join("\n\n");
  }

  function renderNow() {
    state.renderTimer = 0;
    $("raw").textContent = allText();
    var box = $("rendered-box");
    box.hidden = !state.format;
    if (!state.format) return;
    var out = $("rendered");
    out.textContent = "";
    state.results.forEach(function (r) {
      var section = document.createElement("section");
      if (state.results.length > 1) {
        var h = document.createElement("h3");
        h.className = "got-section-heading";
        h.textContent = r.label;
        section.appendChild(h);
      }
      var body = document.createElement("div");
      body.innerHTML = GotRender.renderToHtml(r.text);
      section.appendChild(body);
      out.appendChild(section);
    });
  }

  function scheduleRender() {
    if (!state.renderTimer) state.renderTimer = setTimeout(renderNow, RENDER_INTERVAL_MS);
  }

  function setStat(id, text) { $(id).textContent = text; }

  function ms(t) { return t < 1000 ? Math.round(t) + " ms" : (t / 1000).toFixed(2) + " s"; }

  // ------------------------------------------------------------------ requests

  function apiError(response) {
    return response.text().then(function (text) {
      var msg = text;
      try { msg = JSON.parse(text).error.message; } catch (e) { /* not our JSON: show as is */ }
      throw new Error(response.status + ": " + msg);
    });
  }

  /** One streamed chat completion; calls onDelta(text) per piece, resolves with {finish, usage}. */
  function streamChat(urls, options, signal, onDelta) {
    var content = [{ type: "text", text: "OCR" }].concat(urls.map(function (u) {
      return { type: "image_url", image_url: { url: u } };
    }));
    var body = Object.assign({ messages: [{ role: "user", content: content }], stream: true,
      stream_options: { include_usage: true } }, options);
    if (body.max_tokens === undefined) delete body.max_tokens;
    return fetch("/v1/chat/completions", { method: "POST", headers: headers(true), body: JSON.stringify(body), signal: signal })
      .then(function (response) {
        if (!response.ok) return apiError(response);
        var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = "";
        var out = { finish: null, usage: null };
        function handle(event) {
          var data = event.split("\n").filter(function (l) { return l.indexOf("data:") === 0; })
            .map(function (l) { return l.slice(5).trim(); }).join("\n");
          if (!data || data === "[DONE]") return;
          var obj = JSON.parse(data);
          if (obj.error) throw new Error(obj.error.message);
          if (obj.usage) out.usage = obj.usage;
          (obj.choices || []).forEach(function (c) {
            if (c.delta && c.delta.content) onDelta(c.delta.content);
            if (c.finish_reason) out.finish = c.finish_reason;
          });
        }
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { if (buffer.trim()) handle(buffer); return out; }
            buffer += decoder.decode(chunk.value, { stream: true });
            var cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) {
              handle(buffer.slice(0, cut));
              buffer = buffer.slice(cut + 2);
            }
            return pump();
          });
        }
        return pump();
      });
  }

  /** A PDF read page by page through /v1/ocr (one answer per page; not streamed). */
  function ocrPages(file, options, signal) {
    var body = { image_file: file.dataUri, type: options.ocr_type };
    ["color", "crop", "max_tokens"].forEach(function (k) { if (options[k] !== undefined) body[k] = options[k]; });
    return fetch("/v1/ocr", { method: "POST", headers: headers(true), body: JSON.stringify(body), signal: signal })
      .then(function (response) { return response.ok ? response.json() : apiError(response); });
  }

  function run() {
    if (state.controller) return;
    clearError();
    var options = baseOptions();
    var m = mode();
    state.format = options.ocr_type === "format";
    state.results = [];
    state.usage = { prompt: 0, completion: 0 };
    state.controller = new AbortController();
    var signal = state.controller.signal;
    var t0 = performance.now(), tFirst = null;
    ["stat-ttft", "stat-total", "stat-tokens", "stat-rate"].forEach(function (id) { setStat(id, "–"); });
    setStat("stat-state", "reading…");
    updateControls();
    renderNow();

    // the jobs: one multi-page prompt, or one per image (streamed) / per PDF (page by page)
    var jobs = [];
    if (m === "multipage") {
      jobs.push({ label: state.files.map(function (f) { return f.name; }).join(" + "), files: state.files });
    } else {
      state.files.forEach(function (f) { jobs.push({ label: f.name, files: [f], pdf: f.pdf }); });
    }

    function firstToken() {
      if (tFirst === null) { tFirst = performance.now(); setStat("stat-ttft", ms(tFirst - t0)); }
    }

    function addUsage(u) {
      if (!u) return;
      state.usage.prompt += u.prompt_tokens;
      state.usage.completion += u.completion_tokens;
      setStat("stat-tokens", state.usage.prompt + " / " + state.usage.completion);
    }

    var chain = Promise.resolve();
    jobs.forEach(function (job) {
      chain = chain.then(function () {
        if (job.pdf) {
          return ocrPages(job.files[0], options, signal).then(function (res) {
            firstToken();
            res.choices.forEach(function (c) {
              state.results.push({ label: job.label + " page " + (c.index + 1), text: c.text, finish_reason: c.finish_reason });
            });
            addUsage(res.usage);
            renderNow();
          });
        }
        var result = { label: job.label, text: "", finish_reason: null };
        state.results.push(result);
        return streamChat(job.files.map(function (f) { return f.dataUri; }), options, signal, function (delta) {
          firstToken();
          result.text += delta;
          scheduleRender();
        }).then(function (end) {
          result.finish_reason = end.finish;
          addUsage(end.usage);
        });
      });
    });

    chain.then(function () {
      setStat("stat-state", "done (" + state.results.map(function (r) { return r.finish_reason; }).join(", ") + ")");
    }, function (err) {
      if (err && err.name === "AbortError") setStat("stat-state", "stopped");
      else { setStat("stat-state", "failed"); showError(String(err && err.message ? err.message : err)); }
    }).then(function () {
      var t = performance.now();
      setStat("stat-total", ms(t - t0));
      if (tFirst !== null && state.usage.completion > 0 && t > tFirst) {
        setStat("stat-rate", (state.usage.completion / ((t - tFirst) / 1000)).toFixed(1));
      }
      state.controller = null;
      clearTimeout(state.renderTimer);
      renderNow();
      updateControls();
      document.body.dataset.runs = String((parseInt(document.body.dataset.runs || "0", 10)) + 1);
    });
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  // ------------------------------------------------------------------ copy / download

  function download(name, type, text) {
    var url = URL.createObjectURL(new Blob([text], { type: type }));
    var a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
  }

  function baseName() {
    var f = state.files[0];
    return (f ? f.name.replace(/\.[^.]*$/, "") : "ocr") || "ocr";
  }

  function copy() {
    var text = allText();
    var done = function () { $("copy").textContent = "Copied"; setTimeout(function () { $("copy").textContent = "Copy text"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { showError("The browser refused the clipboard."); });
    } else {
      var ta = document.createElement("textarea");
      ta.value = text;
      document.body.appendChild(ta);
      ta.select();
      document.execCommand("copy");
      ta.remove();
      done();
    }
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $("file").addEventListener("change", function (ev) { setFiles(ev.target.files); ev.target.value = ""; });
    var drop = $("drop");
    drop.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $("file").click(); }
    });
    drop.addEventListener("dragover", function (ev) { ev.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
    drop.addEventListener("drop", function (ev) {
      ev.preventDefault();
      drop.classList.remove("over");
      setFiles(ev.dataTransfer.files);
    });
    document.addEventListener("paste", function (ev) {
      var files = ev.clipboardData ? ev.clipboardData.files : null;
      if (files && files.length) { ev.preventDefault(); setFiles(files); }
    });
    var stage = $("stage");
    stage.addEventListener("pointerdown", onPointerDown);
    stage.addEventListener("pointermove", onPointerMove);
    stage.addEventListener("pointerup", onPointerUp);
    stage.addEventListener("pointercancel", function () { drag = null; });
    document.querySelectorAll('input[name="mode"], #format-too').forEach(function (el) {
      el.addEventListener("change", function () { if (mode() !== "box") clearBox(); updateControls(); });
    });
    $("run").addEventListener("click", run);
    $("stop").addEventListener("click", stop);
    $("copy").addEventListener("click", copy);
    $("download").addEventListener("click", function () {
      download(baseName() + (state.format ? ".md" : ".txt"), (state.format ? "text/markdown" : "text/plain") + ";charset=utf-8", allText());
    });
    $("download-json").addEventListener("click", function () {
      download(baseName() + ".json", "application/json",
        JSON.stringify({ results: state.results, usage: state.usage }, null, 2));
    });
    pollHealth();
    updateControls();
    document.documentElement.dataset.ready = "true";
  }

  init();
})();
