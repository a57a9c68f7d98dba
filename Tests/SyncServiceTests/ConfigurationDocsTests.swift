import Foundation
import Kafka
import Testing

@testable import SyncService

extension ConfigurationTests {
    /// docs/configuration.md: its key table is generated from ``SyncConfiguration/keys``;
    /// the prose around it and the librdkafka table are written by hand.
    @Suite struct Docs {
        static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docs/configuration.md")
        static let begin = "<!-- BEGIN generated from SyncConfiguration.keys"
        static let end = "<!-- END generated -->"
        static let regenerate = "UPDATE_DOCS=1 swift test --filter ConfigurationTests/Docs"

        /// The generated region: from the line after the begin marker to the end marker.
        static func generatedRegion(of text: String) throws -> Range<String.Index> {
            let b = try #require(text.range(of: begin), "docs/configuration.md lacks its \(begin) … --> line")
            let newline = try #require(text[b.upperBound...].firstIndex(of: "\n"), "the begin marker ends the file")
            let e = try #require(text.range(of: end, range: newline..<text.endIndex), "docs/configuration.md lacks \(end)")
            return text.index(after: newline)..<e.lowerBound
        }

        /// With `UPDATE_DOCS=1` the test rewrites the region instead of failing.
        @Test func theKeyTableIsGeneratedFromTheKeys() throws {
            var text = try String(contentsOf: Self.path, encoding: .utf8)
            let region = try Self.generatedRegion(of: text)
            let generated = SyncConfiguration.keyTableMarkdown()
            guard String(text[region]) != generated else { return }
            if ProcessInfo.processInfo.environment["UPDATE_DOCS"] == "1" {
                text.replaceSubrange(region, with: generated)
                try text.write(to: Self.path, atomically: true, encoding: .utf8)
                return
            }
            let documented = text[region].split(separator: "\n", omittingEmptySubsequences: false)
            let first = zip(documented, generated.split(separator: "\n", omittingEmptySubsequences: false)).first { $0 != $1 }
            Issue.record(
                """
                docs/configuration.md's key table differs from SyncConfiguration.keys; regenerate it with \(Self.regenerate)
                first difference: \(first.map { "documented \($0.0)\n generated \($0.1)" } ?? "the number of rows")
                """)
        }

        @Test func everyKeyIsDocumented() throws {
            let text = try String(contentsOf: Self.path, encoding: .utf8)
            for k in SyncConfiguration.keys where k.inFile {
                #expect(text.contains("| `\(k.name)` |"), "docs/configuration.md lacks \(k.name)")
            }
        }

        @Test func everyKeyRowHasFourCells() throws {
            // A | in a type such as json|text ends the cell unless escaped.
            let text = try String(contentsOf: Self.path, encoding: .utf8)
            for k in SyncConfiguration.keys where k.inFile {
                let row = try #require(text.split(separator: "\n").first { $0.hasPrefix("| `\(k.name)` |") })
                let separators = row.replacingOccurrences(of: "\\|", with: "").filter { $0 == "|" }.count
                #expect(separators == 5, "\(row)")
            }
        }

        @Test func theLibrdkafkaDefaultsTableMatchesTheCode() throws {
            // docs/configuration.md states the librdkafka properties the daemon sets; the
            // prefetch sizes in particular are a documented memory cost, so the table must
            // say what the consumer really sets.
            let text = try String(contentsOf: Self.path, encoding: .utf8)
            var checked = 0
            for line in text.split(separator: "\n") where line.hasPrefix("| `") {
                let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
                guard cells.count >= 2 else { continue }
                let names = cells[0].split(separator: "/").map {
                    $0.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "`"))
                }
                guard names.allSatisfy({ KafkaConsumer.defaults[$0] != nil }) else { continue }
                let values = cells[1].split(separator: "/").map {
                    $0.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: " (always)", with: "")
                }
                #expect(names.map { KafkaConsumer.defaults[$0]! } == values, "\(line)")
                checked += names.count
            }
            #expect(checked >= 8)
        }
    }
}
