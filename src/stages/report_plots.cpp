// SVG scatter plots of the report, written as text: a browser opens them, no library needed.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "mixsim/core/error.hpp"
#include "mixsim/stages/report.hpp"

namespace mixsim {
namespace {

constexpr double kWidth = 560, kHeight = 440;
constexpr double kLeft = 80, kRight = 24, kTop = 48, kBottom = 64;

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

struct Axis {
  double lo, hi;  // data range shown
  double step;    // tick spacing
  int decimals;   // digits of the tick labels
};

// A range padded by 5% with ticks at 1, 2 or 5 times a power of ten, about five of them.
Axis make_axis(const std::vector<double>& v) {
  double lo = *std::min_element(v.begin(), v.end()), hi = *std::max_element(v.begin(), v.end());
  if (hi - lo < 1e-12 * std::max(1.0, std::fabs(hi))) {
    lo -= 0.5;
    hi += 0.5;
  }
  const double pad = 0.05 * (hi - lo);
  lo -= pad;
  hi += pad;
  const double raw = (hi - lo) / 5.0;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double f : {1.0, 2.0, 5.0, 10.0})
    if (f * magnitude >= raw) {
      step = f * magnitude;
      break;
    }
  return {lo, hi, step, std::max(0, -static_cast<int>(std::floor(std::log10(step))))};
}

}  // namespace

std::string svg_scatter(const std::string& title, const std::vector<double>& x,
                        const std::vector<double>& y, const std::vector<std::string>& labels,
                        const std::string& x_label, const std::string& y_label) {
  MIXSIM_CHECK(!x.empty() && x.size() == y.size() && labels.size() == x.size(),
               "scatter of {} x, {} y, {} labels", x.size(), y.size(), labels.size());
  const Axis ax = make_axis(x), ay = make_axis(y);
  const double pw = kWidth - kLeft - kRight, ph = kHeight - kTop - kBottom;
  auto px = [&](double v) { return kLeft + (v - ax.lo) / (ax.hi - ax.lo) * pw; };
  auto py = [&](double v) { return kTop + ph - (v - ay.lo) / (ay.hi - ay.lo) * ph; };

  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} "
      "{1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<clipPath id=\"area\"><rect x=\"{4}\" y=\"{5}\" width=\"{6}\" height=\"{7}\"/></clipPath>\n"
      "<text x=\"{2}\" y=\"28\" text-anchor=\"middle\" font-size=\"15\">{3}</text>\n",
      kWidth, kHeight, kWidth / 2, xml_escape(title), kLeft, kTop, kWidth - kLeft - kRight,
      kHeight - kTop - kBottom);
  // Grid, ticks and tick labels.
  // Ticks as integer multiples of the step, so that no rounding accumulates.
  for (double k = std::ceil(ax.lo / ax.step), t = k * ax.step; t <= ax.hi; t = ++k * ax.step)
    s += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#e4e4e4\"/>"
        "<text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4:.{5}f}</text>\n",
        px(t), kTop, kTop + ph, kTop + ph + 16, t, ax.decimals);
  for (double k = std::ceil(ay.lo / ay.step), t = k * ay.step; t <= ay.hi; t = ++k * ay.step)
    s += fmt::format(
        "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#e4e4e4\"/>"
        "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5:.{6}f}</text>\n",
        kLeft, py(t), kLeft + pw, kLeft - 6, py(t) + 4, t, ay.decimals);
  s += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n", kLeft,
      kTop, pw, ph);
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", kLeft + pw / 2,
                   kHeight - 18, xml_escape(x_label));
  s += fmt::format(
      "<text transform=\"translate(20,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
      kTop + ph / 2, xml_escape(y_label));
  // The least-squares line y = a + b x, over the data's x range.
  const double n = static_cast<double>(x.size());
  const double mx = std::accumulate(x.begin(), x.end(), 0.0) / n;
  const double my = std::accumulate(y.begin(), y.end(), 0.0) / n;
  double sxy = 0, sxx = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
  }
  if (sxx > 0) {
    const double b = sxy / sxx, a = my - b * mx;
    const double x0 = *std::min_element(x.begin(), x.end()),
                 x1 = *std::max_element(x.begin(), x.end());
    s += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#d62728\" "
        "stroke-dasharray=\"5,4\" clip-path=\"url(#area)\"/>\n",
        px(x0), py(a + b * x0), px(x1), py(a + b * x1));
  }
  for (std::size_t i = 0; i < x.size(); ++i)
    s += fmt::format(
        "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4.5\" fill=\"#1f77b4\" fill-opacity=\"0.75\">"
        "<title>{} (proxy {:.4f}, truth {:.4f})</title></circle>\n",
        px(x[i]), py(y[i]), xml_escape(labels[i]), x[i], y[i]);
  s += "</svg>\n";
  return s;
}

}  // namespace mixsim
