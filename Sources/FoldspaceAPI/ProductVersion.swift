/// The product's version, sent as `User-Agent: foldspace-sync/<version>`.
public let foldspaceSyncVersion = "0.1.0"
