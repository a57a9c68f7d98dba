import Foundation
import Testing

@testable import Kafka

@Suite struct SecretPropertiesTests {
    /// Whatever librdkafka can be given a secret in must be redacted in `check-config`
    /// and logs: checked against librdkafka's own table of every property it has.
    @Test func everyPropertyThatCanHoldASecretIsRedacted() throws {
        let props = KafkaClientConfig.librdkafkaProperties()
        #expect(props.count > 120, "\(props.count) properties")
        let names = Set(props.map(\.name))
        #expect(names.contains("bootstrap.servers") && names.contains("sasl.oauthbearer.extensions") && names.contains("acks"))
        // Descriptions that mention secret material; these four mention it but hold none
        // (a boolean, an enum, a callback, a path).
        let holdsNone: Set = [
            "enable.sasl.oauthbearer.unsecure.jwt", "sasl.oauthbearer.method",
            "oauthbearer_token_refresh_cb", "ssl.key.location",
        ]
        let words = ["password", "secret", "private key", "credential", "token", "key=value", "passphrase"]
        var checked = 0
        for p in props where !holdsNone.contains(p.name) {
            let text = (p.name + " " + p.description).lowercased()
            guard words.contains(where: { text.contains($0) }) else { continue }
            checked += 1
            #expect(KafkaClientConfig.isSecret(p.name), "\(p.name): \(p.description.prefix(120))")
            #expect(KafkaClientConfig.isSecret(p.name.uppercased()), "\(p.name)")
        }
        #expect(checked >= 8)
        for k in [
            "sasl.password", "ssl.key.password", "ssl.key.pem", "ssl_key", "ssl.keystore.password",
            "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config", "sasl.oauthbearer.extensions",
            "sasl.oauthbearer.token.endpoint.url", "sasl.kerberos.kinit.cmd",
            // Not librdkafka's (a later version's, or a typo): redacted until known.
            "sasl.aws.secret.access.key", "some.future.property",
        ] {
            #expect(KafkaClientConfig.isSecret(k), "\(k)")
        }
        // What operators need to read in check-config stays visible.
        for k in [
            "bootstrap.servers", "group.id", "security.protocol", "sasl.mechanism", "sasl.username",
            "ssl.ca.location", "client.id", "fetch.wait.max.ms", "statistics.interval.ms", "compression.codec",
        ] {
            #expect(!KafkaClientConfig.isSecret(k), "\(k)")
        }
        // Every name shown in clear is one librdkafka has (no stale or misspelt entry).
        for k in KafkaClientConfig.nonSecretProperties { #expect(names.contains(k), "\(k)") }
    }
}
