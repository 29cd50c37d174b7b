/**
 * docs/benchmarks-ratios.svg: one horizontal bar per table row, on a log scale
 * centred on 1× (bars to the right: kvm-manager-agent better; left: qemu-ga).
 */
import { ratio, type Section } from "./report.ts";

export const CHART_FILE = "benchmarks-ratios.svg";

const WIDTH = 960;
const LABEL = 470;
const BAR_AREA = WIDTH - LABEL - 70;
const ROW = 22;
const MIN_LOG = -3; // 1/8×
const MAX_LOG = 4; // 16×

function escape(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

export function ratioChart(sections: Section[]): string {
  const x = (log2: number) => LABEL + ((Math.min(Math.max(log2, MIN_LOG), MAX_LOG) - MIN_LOG) / (MAX_LOG - MIN_LOG)) * BAR_AREA;
  const parts: string[] = [];
  let y = 52;
  for (const section of sections) {
    parts.push(`<text x="8" y="${y + 14}" font-weight="bold">${escape(section.title)}</text>`);
    y += ROW + 4;
    for (const row of section.rows) {
      const r = ratio(row);
      if (r === null) continue;
      const start = x(0);
      const end = x(Math.log2(r));
      const colour = r >= 1 ? "#2e7d32" : "#c62828";
      parts.push(
        `<text x="${LABEL - 8}" y="${y + 15}" text-anchor="end">${escape(row.metric)}</text>`,
        `<rect x="${Math.min(start, end)}" y="${y + 4}" width="${Math.max(Math.abs(end - start), 1)}" height="${ROW - 8}" fill="${colour}"/>`,
        `<text x="${Math.max(start, end) + 4}" y="${y + 15}">${r.toFixed(2)}×</text>`,
      );
      y += ROW;
    }
    y += 10;
  }
  const ticks = [-3, -2, -1, 0, 1, 2, 3, 4].map((t) => {
    const tx = x(t);
    const label = t >= 0 ? `${2 ** t}×` : `1/${2 ** -t}×`;
    return `<line x1="${tx}" y1="40" x2="${tx}" y2="${y}" stroke="${t === 0 ? "#000" : "#ddd"}"/><text x="${tx}" y="36" text-anchor="middle">${label}</text>`;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${y + 10}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#fff"/>
<text x="8" y="14" font-size="13">kvm-manager-agent vs qemu-ga: ratio per metric (log scale; right of 1× = ours better)</text>
${ticks.join("\n")}
${parts.join("\n")}
</svg>
`;
}
