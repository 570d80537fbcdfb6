/* GOT format output (Mathpix-style markdown + LaTeX) -> HTML, in the browser.
 *
 * Used by the web page (live, while text streams in) and by the standalone documents that
 * `gotocr ocr --render` and `/v1/ocr` with "render": "html" write. Needs the globals `markdownit`
 * (markdown-it) and `katex` (KaTeX), both vendored in the package.
 *
 * Rules (the render step of the official GOT demo, adapted; see docs/RENDERING.md):
 *  - math: \( \) and $ $ inline, \[ \] and $$ $$ display. A single $ is math only when it opens
 *    before a non-space and closes after a non-space, not followed by a digit ("$5 and $10" stay
 *    text); every other $ is literal.
 *  - a math span whose \left and \right counts differ has its \left / \right dropped
 *    (\left( -> (, \right) -> ), \left. -> nothing): KaTeX refuses unbalanced pairs.
 *  - \begin{tabular} ... \end{tabular} becomes an HTML table (\hline, \cline, \multicolumn,
 *    \multirow; cells are markdown with math).
 *  - \title / \section / \subsection lines become headings, \begin{itemize|enumerate} lists,
 *    \textbf / \textit / \emph / \underline bold, italic, underlined text.
 *  - nothing from the text is ever markup: markdown-it runs with html off, KaTeX with trust off,
 *    table cells go through the same escaping; images are never loaded (their alt text is shown).
 */
(function (root) {
  "use strict";

  var LEFT_RE = /\\left(?![A-Za-z])/g;
  var RIGHT_RE = /\\right(?![A-Za-z])/g;
  // \left / \right followed by a delimiter: a control word (\{, \langle, \|), one character, or "."
  var LEFT_RIGHT_DELIM_RE = /\\(?:left|right)(?![A-Za-z])\s*(\\[A-Za-z]+|\\.|.)/g;

  function count(re, s) {
    var m = s.match(re);
    return m ? m.length : 0;
  }

  /** TeX of one math span, with unbalanced \left / \right removed (KaTeX rejects them). */
  function balanceLeftRight(tex) {
    if (count(LEFT_RE, tex) === count(RIGHT_RE, tex)) return tex;
    return tex.replace(LEFT_RIGHT_DELIM_RE, function (_all, delim) {
      return delim === "." ? "" : delim;
    });
  }

  function escapeHtml(s) {
    return String(s)
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");
  }

  function renderMath(tex, display) {
    var src = balanceLeftRight(tex);
    try {
      return katex.renderToString(src, {
        displayMode: display,
        throwOnError: true,
        trust: false,
        strict: "ignore",
        output: "htmlAndMathml",
        maxExpand: 1000,
        maxSize: 50,
      });
    } catch (err) {
      // Not valid TeX (a model can write anything): show it as it is, marked.
      // (a span either way: display math may sit inside a paragraph)
      var title = err && err.message ? err.message : "invalid TeX";
      return '<span class="math-error' + (display ? " display" : "") + '" title="' + escapeHtml(title) + '">' +
        escapeHtml(display ? "\\[" + tex + "\\]" : "\\(" + tex + "\\)") + "</span>";
    }
  }

  // ------------------------------------------------------------------ delimiter scanning

  function isSpace(ch) {
    return ch === " " || ch === "\t" || ch === "\n" || ch === "\r";
  }

  /** Index of `close` at or after `from`; -1 if none. A backslash and the character after it
   * are one unit, so the "\\)" of "a \\) b" (a TeX line break, then ")") closes nothing. */
  function findClose(src, from, close, end) {
    for (var i = from; i + close.length <= end; i++) {
      if (src.startsWith(close, i)) return i;
      if (src.charCodeAt(i) === 0x5c /* \ */) i++;
    }
    return -1;
  }

  /** The closing $ of an inline $...$ opened at `start`, or -1 when it is not math. */
  function findDollarClose(src, start, end) {
    var first = src.charAt(start + 1);
    if (start + 1 >= end || isSpace(first) || first === "$") return -1;
    for (var i = start + 1; i < end; i++) {
      var ch = src.charAt(i);
      if (ch === "\\") { i++; continue; }
      if (ch === "\n" && src.charAt(i + 1) === "\n") return -1;  // never across paragraphs
      if (ch === "$") {
        if (isSpace(src.charAt(i - 1))) return -1;
        var next = src.charAt(i + 1);
        if (next >= "0" && next <= "9") return -1;
        return i;
      }
    }
    return -1;
  }

  // Openers recognised inside a paragraph: [open, close, display]
  var INLINE_DELIMS = [["\\(", "\\)", false], ["\\[", "\\]", true], ["$$", "$$", true]];

  function mathInline(state, silent) {
    var src = state.src, pos = state.pos, max = state.posMax;
    var ch = src.charCodeAt(pos);
    if (ch !== 0x5c && ch !== 0x24 /* $ */) return false;
    if (src.startsWith("\\begin{tabular}", pos)) {
      var endTab = findTabularEnd(src, pos, max);
      if (endTab < 0) return false;
      if (!silent) {
        var tok = state.push("tabular", "", 0);
        tok.content = src.slice(pos, endTab);
      }
      state.pos = endTab;
      return true;
    }
    for (var d = 0; d < INLINE_DELIMS.length; d++) {
      var open = INLINE_DELIMS[d][0], close = INLINE_DELIMS[d][1];
      if (!src.startsWith(open, pos)) continue;
      var at = findClose(src, pos + open.length, close, max);
      if (at < 0) return false;
      if (!silent) {
        var t = state.push("math_inline", "math", 0);
        t.content = src.slice(pos + open.length, at);
        t.meta = { display: INLINE_DELIMS[d][2] };
      }
      state.pos = at + close.length;
      return true;
    }
    if (ch !== 0x24) return false;
    var closing = findDollarClose(src, pos, max);
    if (closing < 0) {
      // A lone $ is text (currency, a stray model token), never the start of math.
      if (!silent) state.push("text", "", 0).content = "$";
      state.pos = pos + 1;
      return true;
    }
    if (!silent) {
      var m = state.push("math_inline", "math", 0);
      m.content = src.slice(pos + 1, closing);
      m.meta = { display: false };
    }
    state.pos = closing + 1;
    return true;
  }

  // LaTeX text styles -> markdown-it's own emphasis tokens; the argument is parsed as inline
  // markdown (so math and nested styles inside work). Unknown commands stay text.
  var TEXT_STYLES = { "\\textbf": "strong", "\\textit": "em", "\\emph": "em", "\\underline": "u" };
  var TEXT_STYLE_RE = /^\\(textbf|textit|emph|underline)\{/;

  function textStyle(state, silent) {
    var src = state.src, pos = state.pos;
    if (src.charCodeAt(pos) !== 0x5c) return false;
    var m = TEXT_STYLE_RE.exec(src.slice(pos, pos + 12));
    if (!m) return false;
    var arg = braced(src, pos + m[0].length - 1);
    if (!arg || arg[1] > state.posMax) return false;
    if (!silent) {
      var tag = TEXT_STYLES["\\" + m[1]];
      var oldMax = state.posMax;
      state.push(tag + "_open", tag, 1);
      state.pos = pos + m[0].length;
      state.posMax = arg[1] - 1;
      state.md.inline.tokenize(state);
      state.posMax = oldMax;
      state.push(tag + "_close", tag, -1);
    }
    state.pos = arg[1];
    return true;
  }

  // Blocks that start a line: display math and tables may span lines.
  var BLOCK_DELIMS = [["\\[", "\\]"], ["$$", "$$"], ["\\begin{tabular}", "\\end{tabular}"]];

  function findTabularEnd(src, from, end) {
    // nested tabulars: count \begin{tabular} / \end{tabular} pairs
    var depth = 0, i = from;
    while (i < end) {
      var b = src.indexOf("\\begin{tabular}", i), e = src.indexOf("\\end{tabular}", i);
      if (e < 0 || e >= end) return -1;
      if (b >= 0 && b < e) { depth++; i = b + 15; continue; }
      depth--;
      i = e + 13;
      if (depth === 0) return i;
    }
    return -1;
  }

  function mathBlock(state, startLine, endLine, silent) {
    var start = state.bMarks[startLine] + state.tShift[startLine];
    var src = state.src;
    if (state.sCount[startLine] - state.blkIndent >= 4) return false;
    for (var d = 0; d < BLOCK_DELIMS.length; d++) {
      var open = BLOCK_DELIMS[d][0], close = BLOCK_DELIMS[d][1];
      if (!src.startsWith(open, start)) continue;
      var isTable = d === 2;
      var closeAt = isTable ? findTabularEnd(src, start, src.length) - close.length
        : findClose(src, start + open.length, close, src.length);
      if (closeAt < 0) return false;
      var after = closeAt + close.length;
      // the block must end its line (text after it: leave it to the paragraph's inline rule)
      var lineEnd = src.indexOf("\n", after);
      if (lineEnd < 0) lineEnd = src.length;
      if (src.slice(after, lineEnd).trim() !== "") return false;
      if (silent) return true;
      var line = startLine;
      while (line < endLine && state.eMarks[line] < after) line++;
      var tok;
      if (isTable) {
        tok = state.push("tabular", "", 0);
        tok.content = src.slice(start, after);
      } else {
        tok = state.push("math_block", "math", 0);
        tok.content = src.slice(start + open.length, closeAt);
      }
      tok.block = true;
      tok.map = [startLine, line + 1];
      state.line = line + 1;
      return true;
    }
    return false;
  }

  var HEADING_RE = /^\\(title|section|subsection|subsubsection)\*?\{(.*)\}\s*$/;
  var HEADING_LEVEL = { title: 1, section: 2, subsection: 3, subsubsection: 4 };

  function latexHeading(state, startLine, _endLine, silent) {
    var start = state.bMarks[startLine] + state.tShift[startLine];
    var text = state.src.slice(start, state.eMarks[startLine]);
    var m = HEADING_RE.exec(text);
    if (!m) return false;
    if (silent) return true;
    var level = HEADING_LEVEL[m[1]];
    var open = state.push("heading_open", "h" + level, 1);
    open.map = [startLine, startLine + 1];
    var inline = state.push("inline", "", 0);
    inline.content = m[2];
    inline.map = [startLine, startLine + 1];
    inline.children = [];
    state.push("heading_close", "h" + level, -1);
    state.line = startLine + 1;
    return true;
  }

  var LIST_RE = /^\\begin\{(itemize|enumerate)\}/;

  /** \begin{itemize|enumerate} ... \end{...} from the start of a line: a list of its \item's. */
  function latexList(state, startLine, endLine, silent) {
    var start = state.bMarks[startLine] + state.tShift[startLine];
    var src = state.src;
    var m = LIST_RE.exec(src.slice(start, start + 20));
    if (!m) return false;
    var close = "\\end{" + m[1] + "}";
    var at = src.indexOf(close, start);
    if (at < 0) return false;
    var after = at + close.length;
    var lineEnd = src.indexOf("\n", after);
    if (lineEnd < 0) lineEnd = src.length;
    if (src.slice(after, lineEnd).trim() !== "") return false;
    if (silent) return true;
    var line = startLine;
    while (line < endLine && state.eMarks[line] < after) line++;
    var tok = state.push("latex_list", m[1] === "itemize" ? "ul" : "ol", 0);
    tok.content = src.slice(start + m[0].length, at);
    tok.block = true;
    tok.map = [startLine, line + 1];
    state.line = line + 1;
    return true;
  }

  function renderList(md, token, env) {
    var items = token.content.split(/\\item\b/).slice(1);
    var html = ["<" + token.tag + ' class="latex-list">'];
    for (var i = 0; i < items.length; i++) {
      var text = items[i].replace(/^\s*\[[^\]]*\]/, "").trim();  // \item[label]: the label is dropped
      html.push("<li>" + md.renderInline(text, env) + "</li>");
    }
    html.push("</" + token.tag + ">\n");
    return html.join("");
  }

  // ------------------------------------------------------------------ tabular -> HTML table

  /** The argument in braces starting at `i` (which must be "{"): [content, index after]. */
  function braced(src, i) {
    if (src.charAt(i) !== "{") return null;
    var depth = 0;
    for (var j = i; j < src.length; j++) {
      var ch = src.charAt(j);
      if (ch === "\\") { j++; continue; }
      if (ch === "{") depth++;
      else if (ch === "}" && --depth === 0) return [src.slice(i + 1, j), j + 1];
    }
    return null;
  }

  /** Split at `sep` ("\\\\" rows or "&" cells) outside braces and math. */
  function splitTop(src, sep) {
    var parts = [], depth = 0, last = 0, inDollar = false, inParen = false;
    for (var i = 0; i < src.length; i++) {
      var ch = src.charAt(i);
      if (ch === "\\") {
        var two = src.substr(i, 2);
        if (two === "\\(") inParen = true;
        else if (two === "\\)") inParen = false;
        else if (sep === "\\\\" && two === "\\\\" && depth === 0 && !inDollar && !inParen) {
          parts.push(src.slice(last, i));
          last = i + 2;
        }
        i++;
        continue;
      }
      if (ch === "{") depth++;
      else if (ch === "}") depth = Math.max(0, depth - 1);
      else if (ch === "$") inDollar = !inDollar;
      else if (ch === sep && depth === 0 && !inDollar && !inParen) {
        parts.push(src.slice(last, i));
        last = i + 1;
      }
    }
    parts.push(src.slice(last));
    return parts;
  }

  var RULE_RE = /^\s*(?:\\hline|\\toprule|\\midrule|\\bottomrule|\\cline\{[^}]*\}|\\hhline\{[^}]*\}|\\cmidrule(?:\([^)]*\))?\{[^}]*\})\s*/;

  function columnAligns(spec) {
    var out = [];
    for (var i = 0; i < spec.length; i++) {
      var ch = spec.charAt(i);
      if (ch === "l" || ch === "c" || ch === "r") out.push(ch);
      else if (ch === "p" || ch === "m" || ch === "b" || ch === "X") {
        out.push("l");
        var arg = braced(spec, i + 1);
        if (arg) i = arg[1] - 1;
      } else if (ch === "@" || ch === "!" || ch === ">" || ch === "<") {
        var skip = braced(spec, i + 1);
        if (skip) i = skip[1] - 1;
      }
    }
    return out;
  }

  /** One cell: {content, colspan, rowspan, align}. */
  function parseCell(raw, align) {
    var cell = { content: raw.trim(), colspan: 1, rowspan: 1, align: align };
    var m = /^\\multicolumn\s*/.exec(cell.content);
    if (m) {
      var n = braced(cell.content, m[0].length);
      var spec = n && braced(cell.content, n[1]);
      var body = spec && braced(cell.content, spec[1]);
      if (body) {
        cell.colspan = Math.max(1, parseInt(n[0], 10) || 1);
        cell.align = columnAligns(spec[0])[0] || align;
        cell.content = body[0].trim();
      }
    }
    m = /^\\multirow\s*/.exec(cell.content);
    if (m) {
      var rows = braced(cell.content, m[0].length);
      var pos = rows ? rows[1] : -1;
      if (rows && cell.content.charAt(pos) === "[") pos = cell.content.indexOf("]", pos) + 1;
      var width = rows && braced(cell.content, pos);
      var inner = width && braced(cell.content, width[1]);
      if (inner) {
        cell.rowspan = Math.max(1, parseInt(rows[0], 10) || 1);
        cell.content = inner[0].trim();
      }
    }
    return cell;
  }

  function renderTabular(md, src, env) {
    var head = /^\\begin\{tabular\}\s*/.exec(src);
    var spec = head && braced(src, head[0].length);
    if (!spec) return "<p>" + escapeHtml(src) + "</p>";
    var body = src.slice(spec[1], src.lastIndexOf("\\end{tabular}"));
    var aligns = columnAligns(spec[0]);
    var covered = [];  // covered[col] = rows still spanned by a \multirow above
    var html = ['<table class="tabular"><tbody>'];
    var rows = splitTop(body, "\\\\");
    for (var r = 0; r < rows.length; r++) {
      var text = rows[r];
      var m;
      while ((m = RULE_RE.exec(text))) text = text.slice(m[0].length);
      var raw = splitTop(text, "&");
      if (raw.length === 1 && raw[0].trim() === "") continue;  // a rule-only line
      var cells = [], col = 0;
      for (var c = 0; c < raw.length; c++) {
        while (covered[col] > 0) {
          // LaTeX leaves an empty cell under a \multirow; HTML must not have one
          covered[col]--;
          col++;
          if (raw[c].trim() === "") { raw[c] = null; break; }
        }
        if (raw[c] === null) continue;
        var cell = parseCell(raw[c], aligns[col] || "l");
        if (cell.rowspan > 1) for (var k = 0; k < cell.colspan; k++) covered[col + k] = cell.rowspan - 1;
        cells.push(cell);
        col += cell.colspan;
      }
      for (; col < covered.length; col++) if (covered[col] > 0) covered[col]--;
      html.push("<tr>");
      for (var i = 0; i < cells.length; i++) {
        var x = cells[i];
        html.push("<td class=\"al-" + x.align + "\"" +
          (x.colspan > 1 ? ' colspan="' + x.colspan + '"' : "") +
          (x.rowspan > 1 ? ' rowspan="' + x.rowspan + '"' : "") + ">" +
          md.renderInline(x.content, env) + "</td>");
      }
      html.push("</tr>");
    }
    html.push("</tbody></table>");
    return html.join("");
  }

  // ------------------------------------------------------------------ the markdown-it instance

  function createRenderer() {
    var md = root.markdownit({ html: false, linkify: false, typographer: false, breaks: true });
    // An image would be a request to wherever the text points: show its alt text instead.
    md.renderer.rules.image = function (tokens, idx, options, env, self) {
      return '<span class="image-alt">[' + escapeHtml(self.renderInlineAsText(tokens[idx].children, options, env)) + "]</span>";
    };
    md.inline.ruler.before("escape", "math_inline", mathInline);
    md.inline.ruler.before("escape", "latex_text_style", textStyle);
    md.block.ruler.before("table", "math_block", mathBlock, { alt: ["paragraph", "reference", "blockquote", "list"] });
    md.block.ruler.before("heading", "latex_heading", latexHeading, { alt: ["paragraph", "reference", "blockquote"] });
    md.block.ruler.before("table", "latex_list", latexList, { alt: ["paragraph", "reference", "blockquote", "list"] });
    md.renderer.rules.math_inline = function (tokens, idx) {
      return renderMath(tokens[idx].content, tokens[idx].meta.display);
    };
    md.renderer.rules.math_block = function (tokens, idx) {
      return '<div class="math-display">' + renderMath(tokens[idx].content, true) + "</div>\n";
    };
    md.renderer.rules.latex_list = function (tokens, idx, _options, env) {
      return renderList(md, tokens[idx], env);
    };
    md.renderer.rules.tabular = function (tokens, idx, _options, env) {
      return renderTabular(md, tokens[idx].content, env) + (tokens[idx].block ? "\n" : "");
    };
    return md;
  }

  var instance = null;

  /** HTML for one GOT format answer (safe to assign to innerHTML). */
  function renderToHtml(text) {
    if (instance === null) instance = createRenderer();
    return instance.render(String(text == null ? "" : text));
  }

  root.GotRender = { renderToHtml: renderToHtml, balanceLeftRight: balanceLeftRight, escapeHtml: escapeHtml };
})(typeof window !== "undefined" ? window : globalThis);
